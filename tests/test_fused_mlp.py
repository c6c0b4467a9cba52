"""The fused MLP sublayer (LayerNorm, fc1, exact GELU, fc2 in one Pallas kernel on C-major rows) against
flax's LayerNorm and XLA's products and GELU: forward, every gradient, bfloat16, a sharded mesh, blocks.

The kernel runs in Pallas's interpreter on CPU: the same kernel body, blocks and grid as on a TPU.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avcanet_jax import fused_mlp, window_attention
from avcanet_jax.layers import DEFAULT_RULES

C, HIDDEN, TOKENS = 24, 96, 512


def _inputs(dtype=jnp.float32):
    """Token rows [TOKENS, C], LayerNorm scale and shift, fc1 [C, H] and bias, fc2 [H, C] and bias; the rows
    spread so that GELU sees both its tails."""
    rng = np.random.default_rng(5)
    normal = lambda shape, std, mean=0.0: jnp.asarray(rng.standard_normal(shape) * std + mean)  # noqa: E731
    rows = normal((TOKENS, C), 2.0, 0.5).astype(dtype)
    scale, shift = normal(C, 0.3, 1.0).astype(jnp.float32), normal(C, 0.1).astype(jnp.float32)
    w1, b1 = normal((C, HIDDEN), 2 * C**-0.5).astype(dtype), normal(HIDDEN, 0.5).astype(dtype)
    w2, b2 = normal((HIDDEN, C), HIDDEN**-0.5).astype(dtype), normal(C, 0.1).astype(dtype)
    return rows, scale, shift, w1, b1, w2, b2


def _loss(fused: bool):
    """A loss of (rows, LayerNorm scale and shift, fc1 and its bias, fc2 and its bias): fused, or flax's
    LayerNorm and XLA's products and GELU (the Swin blocks' path)."""
    weights = jnp.cos(jnp.arange(C, dtype=jnp.float32))

    def loss(rows, scale, shift, w1, b1, w2, b2):
        if fused:
            out = fused_mlp.mlp(rows, scale, shift, 1e-5, w1, b1, w2, b2)
        else:
            norm = nnx.LayerNorm(C, epsilon=1e-5, dtype=rows.dtype, rngs=nnx.Rngs(0))
            norm.scale[...], norm.bias[...] = scale, shift
            out = jax.nn.gelu(norm(rows) @ w1 + b1, approximate=False) @ w2 + b2
        return (out.astype(jnp.float32) * weights).sum()

    return loss


def _pallas_operands(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield from eqn.invars
        for sub in jax.core.jaxprs_in_params(eqn.params):
            yield from _pallas_operands(sub)


def test_the_fused_mlp_equals_layer_norm_products_and_gelu(monkeypatch):
    """Four grid steps of 128 tokens (a small hidden budget), so the weight and bias gradients are sums
    over steps; the rows reach the kernel C-major."""
    monkeypatch.setattr(fused_mlp, "HIDDEN_BYTES", 128 * HIDDEN * 4)
    assert fused_mlp.block_tokens(TOKENS, HIDDEN) == 128
    args = _inputs()
    argnums = tuple(range(len(args)))
    value, grads = jax.value_and_grad(_loss(True), argnums=argnums)(*args)
    want_value, want = jax.value_and_grad(_loss(False), argnums=argnums)(*args)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for g, w in zip(grads, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))
    rows = args[0]
    jaxpr = jax.make_jaxpr(lambda r: fused_mlp.mlp(r, *args[1:3], 1e-5, *args[3:]))(rows)
    assert rows.T.shape in {v.aval.shape for v in _pallas_operands(jaxpr.jaxpr)}  # C-major: [C, tokens].


def test_the_fused_mlp_in_bfloat16_and_under_a_sharded_mesh():
    """bf16 within bf16 rounding of float32; under a mesh each device runs its own rows, and its share of
    every weight's gradient is summed over devices."""
    args = _inputs(jnp.bfloat16)
    exact = [a.astype(jnp.float32) for a in args]
    argnums = tuple(range(len(args)))
    value, grads = jax.value_and_grad(_loss(True), argnums=argnums)(*args)
    want_value, want = jax.value_and_grad(_loss(False), argnums=argnums)(*exact)
    assert grads[0].dtype == grads[3].dtype == jnp.bfloat16
    np.testing.assert_allclose(value, want_value, rtol=3e-2)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=3e-2 * float(np.abs(w).max()))

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        assert window_attention.per_device_count(TOKENS) == TOKENS // 4
        got = jax.jit(jax.value_and_grad(_loss(True), argnums=argnums))(jax.device_put(exact[0], rows), *exact[1:])
    want = jax.value_and_grad(_loss(False), argnums=argnums)(*exact)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))


@pytest.mark.parametrize(
    ("tokens", "hidden", "block"),
    [
        (100352, 384, 2048),  # Stage 1 at 2 clips per chip: 49 steps of 16 lane rows.
        (25088, 768, 896),  # Stage 2: 28 steps of 7.
        (200, 64, 200),  # Not whole lanes: one block spans the array.
        (10**6 + 1, 384, 0),  # Neither: the Swin block keeps XLA's path.
    ],
)
def test_fused_mlp_blocks_fill_whole_lanes_within_the_hidden_budget(tokens, hidden, block):
    assert fused_mlp.block_tokens(tokens, hidden) == block
    assert fused_mlp.pays(96, tokens, hidden) == (block > 0)
    assert not fused_mlp.pays(384, tokens, hidden)  # Rows of whole lanes: XLA keeps them row-major.

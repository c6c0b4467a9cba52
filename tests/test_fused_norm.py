"""The fused LayerNorm and bias-free Linear kernel (patch merging) against flax's LayerNorm and XLA's product:
forward, every gradient, every orientation of rows in and out, bfloat16, a sharded mesh; and the same
kernel as a LayerNorm alone (the patch embedding's).

The kernel runs in Pallas's interpreter on CPU: the same kernel body, blocks and grid as on a TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from kernel_checks import (
    assert_bfloat16_close_and_sharded_equal,
    assert_same_value_and_grads,
    pallas_operands,
    pallas_results,
)

from avcanet_jax import fused_mlp, fused_norm

TOKENS = 384


def _inputs(c: int, d: int, dtype=jnp.float32):
    """Rows [TOKENS, c] off centre, LayerNorm scale and shift, weights [c, d]."""
    rng = np.random.default_rng(7)
    normal = lambda shape, std, mean=0.0: jnp.asarray(rng.standard_normal(shape) * std + mean)  # noqa: E731
    rows = normal((TOKENS, c), 2.0, 0.5).astype(dtype)
    scale, shift = normal(c, 0.3, 1.0).astype(jnp.float32), normal(c, 0.1).astype(jnp.float32)
    w = normal((c, d), c**-0.5).astype(dtype)
    return rows, scale, shift, w


def _loss(fused: bool):
    """A loss of (rows, scale, shift, w) through LayerNorm and the product: the kernel, or flax's LayerNorm
    and XLA's product (the Swin modules' path)."""

    def loss(rows, scale, shift, w=None, bias=None):
        if fused:
            out = (
                fused_norm.layer_norm(rows, scale, shift, 1e-5, bias)
                if w is None
                else fused_norm.norm_linear(rows, scale, shift, 1e-5, w)
            )
        else:
            norm = nnx.LayerNorm(rows.shape[-1], epsilon=1e-5, dtype=rows.dtype, rngs=nnx.Rngs(0))
            norm.scale[...], norm.bias[...] = scale, shift
            rows = rows if bias is None else rows + bias.astype(rows.dtype)
            out = norm(rows) if w is None else norm(rows) @ w
        weights = jnp.cos(jnp.arange(out.shape[-1], dtype=jnp.float32))
        return (out.astype(jnp.float32) * weights).sum()

    return loss


@pytest.mark.parametrize(("c", "d"), [(256, 24), (256, 128), (24, 128), (24, 40)])
def test_the_fused_norm_equals_layer_norm_and_product(c, d, monkeypatch):
    """Rows narrower than 128 lanes go in (and come out) C-major, wider ones row-major, each side on its
    own (the first patch merging reads 384-wide rows and writes 192-wide ones); three grid steps (a small
    budget), so the weights' gradients are sums over steps."""
    monkeypatch.setattr(fused_mlp, "HIDDEN_BYTES", 128 * max(c, d) * 4)
    assert fused_mlp.block_tokens(TOKENS, max(c, d), True, 4) == 128
    args = _inputs(c, d)
    assert_same_value_and_grads(_loss(True), _loss(False), args, (0, 1, 2, 3))
    jaxpr = jax.make_jaxpr(lambda r: fused_norm.norm_linear(r, *args[1:3], 1e-5, args[3]))(args[0])
    operands = {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}
    results = {v.aval.shape for v in pallas_results(jaxpr.jaxpr)}
    assert (args[0].T.shape in operands) == (c % 128 != 0) and (args[0].shape in operands) == (c % 128 == 0)
    assert results == {(d, TOKENS) if d % 128 else (TOKENS, d)}


def test_the_fused_norm_in_bfloat16_and_under_a_sharded_mesh():
    assert_bfloat16_close_and_sharded_equal(_loss(True), _loss(False), _inputs(256, 24, jnp.bfloat16))


def _norm_loss(fused: bool):
    """`_loss` of (rows, scale, shift, bias): LayerNorm(rows + bias), no product."""
    return lambda rows, scale, shift, bias: _loss(fused)(rows, scale, shift, None, bias)


@pytest.mark.parametrize("c", [256, 24])
def test_the_kernel_as_a_layer_norm_alone(c, monkeypatch):
    """Without weights the kernel is LayerNorm(rows + bias) (the patch embedding's LayerNorm with its
    convolution's bias), C-major for narrow rows (the embedding's 96), in three grid steps, in float32, in
    bfloat16 and under a sharded mesh; and without a bias, LayerNorm(rows)."""
    monkeypatch.setattr(fused_mlp, "HIDDEN_BYTES", 128 * c * 4)
    rows, scale, shift, _ = _inputs(c, c)
    bias = jnp.asarray(np.random.default_rng(8).standard_normal(c), jnp.float32)
    assert_same_value_and_grads(_norm_loss(True), _norm_loss(False), (rows, scale, shift, bias), (0, 1, 2, 3))
    assert_same_value_and_grads(_loss(True), _loss(False), (rows, scale, shift), (0, 1, 2))
    jaxpr = jax.make_jaxpr(lambda r: fused_norm.layer_norm(r, scale, shift, 1e-5, bias))(rows)
    shape = rows.T.shape if c % 128 else rows.shape
    assert {v.aval.shape for v in pallas_results(jaxpr.jaxpr)} == {shape}
    assert shape in {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}
    low = _inputs(c, c, jnp.bfloat16)[:3] + (bias,)
    assert_bfloat16_close_and_sharded_equal(_norm_loss(True), _norm_loss(False), low)

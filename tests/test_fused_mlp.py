"""The fused MLP sublayer (LayerNorm, fc1, exact GELU, fc2 in one Pallas kernel on C-major rows) against
flax's LayerNorm and XLA's products and GELU: forward, every gradient, bfloat16, a sharded mesh, blocks.

The kernel runs in Pallas's interpreter on CPU: the same kernel body, blocks and grid as on a TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from kernel_checks import assert_bfloat16_close_and_sharded_equal, assert_same_value_and_grads, pallas_operands

from avcanet_jax import fused_mlp

TOKENS = 384


def _inputs(c: int, dtype=jnp.float32):
    """Token rows [TOKENS, c], LayerNorm scale and shift, fc1 [c, 4c] and bias, fc2 [4c, c] and bias; the
    rows spread so that GELU sees both its tails."""
    rng = np.random.default_rng(5)
    hidden = 4 * c
    normal = lambda shape, std, mean=0.0: jnp.asarray(rng.standard_normal(shape) * std + mean)  # noqa: E731
    rows = normal((TOKENS, c), 2.0, 0.5).astype(dtype)
    scale, shift = normal(c, 0.3, 1.0).astype(jnp.float32), normal(c, 0.1).astype(jnp.float32)
    w1, b1 = normal((c, hidden), 2 * c**-0.5).astype(dtype), normal(hidden, 0.5).astype(dtype)
    w2, b2 = normal((hidden, c), hidden**-0.5).astype(dtype), normal(c, 0.1).astype(dtype)
    return rows, scale, shift, w1, b1, w2, b2


def _loss(fused: bool, keep=None, approximate: bool = False):
    """A loss of (rows, LayerNorm scale and shift, fc1 and its bias, fc2 and its bias) through the residual
    MLP (`keep`: each row's stochastic-depth scale): fused, or flax's LayerNorm and XLA's products, GELU and
    residual (the Swin blocks' path)."""

    def loss(rows, scale, shift, w1, b1, w2, b2):
        c = rows.shape[-1]
        weights = jnp.cos(jnp.arange(c, dtype=jnp.float32))
        if fused:
            out = fused_mlp.residual_mlp(rows, scale, shift, 1e-5, w1, b1, w2, b2, keep, approximate)
        else:
            norm = nnx.LayerNorm(c, epsilon=1e-5, dtype=rows.dtype, rngs=nnx.Rngs(0))
            norm.scale[...], norm.bias[...] = scale, shift
            out = jax.nn.gelu(norm(rows) @ w1 + b1, approximate=approximate) @ w2 + b2
            out = rows + (out if keep is None else out * keep[:, None].astype(out.dtype))
        return (out.astype(jnp.float32) * weights).sum()

    return loss


# Four examples of 96 rows; the second dropped, the others kept with probability 0.8.
KEEP = jnp.repeat(jnp.asarray([1.25, 0.0, 1.25, 1.25], jnp.float32), TOKENS // 4)


@pytest.mark.parametrize(("c", "keep", "approximate"), [(24, None, False), (24, KEEP, True), (128, KEEP, False)])
def test_the_fused_mlp_equals_layer_norm_products_gelu_and_residual(c, keep, approximate, monkeypatch):
    """Rows 24 wide go to the kernel C-major ([C, tokens] blocks), 128 wide row-major; three grid steps
    (a small hidden budget), so the weight and bias gradients are sums over steps. GELU exact, or in its
    tanh form (`model.approximate_gelu`)."""
    monkeypatch.setattr(fused_mlp, "HIDDEN_BYTES", 128 * 4 * c * 4)
    c_major = c == 24
    assert fused_mlp.block_tokens(TOKENS, 4 * c, c_major, 4) == 128
    args = _inputs(c)
    argnums = tuple(range(len(args)))
    assert_same_value_and_grads(_loss(True, keep, approximate), _loss(False, keep, approximate), args, argnums)
    rows = args[0]
    jaxpr = jax.make_jaxpr(lambda r: fused_mlp.residual_mlp(r, *args[1:3], 1e-5, *args[3:]))(rows)
    operands = {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}
    assert (rows.T.shape in operands) == c_major and (rows.shape in operands) != c_major


def test_the_fused_mlp_in_bfloat16_and_under_a_sharded_mesh():
    assert_bfloat16_close_and_sharded_equal(_loss(True), _loss(False), _inputs(24, jnp.bfloat16))


@pytest.mark.parametrize(
    ("tokens", "hidden", "c_major", "block"),
    [
        (100352, 384, True, 2048),  # Stage 1 at 2 clips per chip: 49 steps of 16 lane rows.
        (25088, 768, True, 896),  # Stage 2: 28 steps of 7.
        (6272, 1536, False, 448),  # Stage 3, row-major: 14 steps of 28 bf16 tiles.
        (1568, 3072, False, 224),  # Stage 4.
        (200, 64, True, 200),  # Not whole lanes: one block spans the array.
        (10**6 + 1, 384, True, 0),  # Neither: the Swin block keeps XLA's path.
    ],
)
def test_fused_mlp_blocks_span_whole_tiles_within_the_hidden_budget(tokens, hidden, c_major, block):
    assert fused_mlp.block_tokens(tokens, hidden, c_major) == block
    assert fused_mlp.pays(96 if c_major else 384, tokens, hidden) == (block > 0)


def test_swin_blocks_fuse_both_halves_with_stochastic_depth_in_training():
    """A Swin block in training (stochastic depth 0.5, so some examples' branches are dropped) with the
    Pallas paths (each half of the block one kernel, residual and stochastic depth included) gives the XLA
    path's output and gradients from the same random draws."""
    from avcanet_jax.swin3d import SwinBlock3d, SwinConfig

    shape = (4, 2, 8, 8, 16)
    rows = jnp.asarray(np.random.default_rng(2).standard_normal((np.prod(shape[:-1]), 16)), jnp.float32)
    results = []
    for impl in ("xla", "pallas"):
        cfg = SwinConfig(window_size=(2, 4, 4), attention=impl)
        block = SwinBlock3d(16, 2, (0, 0, 0), 0.5, cfg, nnx.Rngs(0, dropout=1))
        windows = block.windows(shape)
        assert block._fuses_mlp(rows) == block._fuses_attention(rows, windows) == (impl == "pallas")

        def loss(block, rows, windows=windows):
            return (block(rows, windows) * jnp.cos(rows)).sum()

        results.append(nnx.value_and_grad(loss, argnums=(0, 1))(block, rows))
    (want, (want_block, want_rows)), (got, (got_block, got_rows)) = results
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_rows, want_rows, atol=1e-5 * float(np.abs(want_rows).max()))
    for g, w in zip(
        jax.tree.leaves(nnx.state(got_block, nnx.Param)), jax.tree.leaves(nnx.state(want_block, nnx.Param)), strict=True
    ):
        np.testing.assert_allclose(g, w, atol=1e-5 * float(np.abs(w).max()))
    # The second draw (the MLP's; the attention's is first) dropped some examples' branch and kept others.
    drop_path = SwinBlock3d(16, 2, (0, 0, 0), 0.5, cfg, nnx.Rngs(0, dropout=1)).drop_path
    drop_path.row_scale(512, 4)
    assert set(np.unique(np.asarray(drop_path.row_scale(512, 4)))) == {0.0, 2.0}

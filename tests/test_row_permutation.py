"""The row-permutation kernel (regrouping token rows between window orders on TPUs) against the transposes
and rolls it replaces: bit for bit, gradients included, in float32 and bfloat16, sharded, and where it
declines. The kernel runs in Pallas's interpreter on CPU: the same kernel body, blocks and grid as on a TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_checks import pallas_operands

from avcanet_jax import row_permutation
from avcanet_jax.swin3d import Windows, permutation_sources

# Swin's windows, and small ones whose examples fill one or two lane tiles, so that the tiled plan's
# unrolled products stay few in the interpreter.
SWIN, SMALL = ((8, 7, 7), (4, 3, 3)), ((2, 4, 4), (1, 2, 2))


def _orders(shape, windows=SWIN):
    window, shift = windows
    return Windows.whole(shape), Windows.of(shape, window, (0, 0, 0)), Windows.of(shape, window, shift)


def _grad(fn, rows, like):
    weights = jnp.cos(jnp.arange(like.size, dtype=jnp.float32)).reshape(like.shape)
    return jax.grad(lambda r: (fn(r).astype(jnp.float32) * weights).sum())(rows)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize(
    "shape, windows, kind",
    [
        ((8, 4, 14, 14, 120), SWIN, "dense"),
        ((8, 2, 4, 12, 24), SMALL, "dense"),
        ((4, 2, 8, 16, 8), SMALL, "tiled"),
        ((4, 2, 8, 24, 8), SMALL, "tiled"),
    ],  # fmt: skip
)
def test_the_kernel_regroups_exactly_as_maps_and_rows(dtype, shape, windows, kind):
    """Into the plain windows, on to the shifted ones, back to the map: each the same rows as
    `dst.rows(src.map(rows))`, and the same gradient (the kernel with the inverse permutation), by either
    plan: one or several examples per block (96 rows fill whole tiles four at a time), each output tile
    from one or several input tiles."""
    whole, plain, shifted = _orders(shape, windows)
    rows = jnp.asarray(np.random.default_rng(0).standard_normal(shape) * 1e3, dtype).reshape(-1, shape[-1])
    for src, dst in ((whole, plain), (plain, shifted), (shifted, whole)):
        sources = permutation_sources(src, dst)
        assert row_permutation.plan(sources, shape[-1], rows.shape[0]).kind == kind
        kernel = lambda r, s=sources: row_permutation.permute(r, s)  # noqa: E731
        by_maps = lambda r, s=src, d=dst: d.rows(s.map(r))  # noqa: E731
        want = by_maps(rows)
        np.testing.assert_array_equal(kernel(rows), want)
        np.testing.assert_array_equal(_grad(kernel, rows, want), _grad(by_maps, rows, want))
        rows = want
    jaxpr = jax.make_jaxpr(lambda r: row_permutation.permute(r, permutation_sources(plain, shifted)))(rows)
    assert rows.T.shape in {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}  # Read C-major.


def test_the_kernel_under_a_sharded_mesh():
    """Each device permutes its own examples' rows (32 examples over the data and fsdp axes, 8 per device)."""
    import flax.linen as nn

    from avcanet_jax.layers import DEFAULT_RULES

    shape = (32, 2, 8, 16, 8)
    whole, plain, shifted = _orders(shape, SMALL)
    rows = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32).reshape(-1, shape[-1])
    sources = permutation_sources(plain, shifted)
    want = shifted.rows(plain.map(rows))
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        got = jax.jit(lambda r: row_permutation.permute(r, sources))(jax.device_put(rows, split))
        grad = jax.jit(lambda r: _grad(lambda x: row_permutation.permute(x, sources), r, want))(
            jax.device_put(rows, split)
        )
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grad, _grad(lambda r: shifted.rows(plain.map(r)), rows, want))


def test_which_plan_serves_which_rows():
    """Stage 1's maps (3,136 tokens) by the tiled plan, stage 2's (784) by the dense one, as the cost
    estimates order them; rows as wide as whole lanes (XLA holds them row-major) and examples too few for a
    block of whole lane tiles not at all; examples that do not fill whole sublane tiles, or too large for
    their matrix to stay in VMEM, only by the tiled plan."""
    stage = lambda size: permutation_sources(*_orders((1, *size, 1))[1:])  # noqa: E731
    stage1, stage2, odd = stage((4, 28, 28)), stage((4, 14, 14)), stage((2, 14, 14))
    assert row_permutation.plan(stage1, 96, 2 * 3136).kind == "tiled"
    assert row_permutation.plan(stage2, 192, 8 * 784).kind == "dense"
    tiles = row_permutation.plan(stage1, 96, 2 * 3136).tiles  # Into the shifted windows: 2 maps, 49 tiles.
    assert (len(tiles), sum(map(len, tiles)), max(map(len, tiles))) == (49, 327, 9)
    assert row_permutation.plan(odd, 96, 16 * 392).kind == "tiled"  # 392 rows end mid sublane tile.
    assert not row_permutation.serves(stage2, 256, 8 * 784)
    assert not row_permutation.serves(stage2, 192, 4 * 784)  # 8 examples of 784 rows fill whole tiles.
    with pytest.raises(ValueError, match="permutation"):
        row_permutation.permute(jnp.zeros((256, 8)), np.zeros(128, int))  # Not a permutation: no inverse.

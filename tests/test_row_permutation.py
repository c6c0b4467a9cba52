"""The row-permutation kernel (regrouping token rows between window orders on TPUs) against the transposes
and rolls it replaces: bit for bit, gradients included, in float32 and bfloat16, sharded, and where it
declines. The kernel runs in Pallas's interpreter on CPU: the same kernel body, blocks and grid as on a TPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_checks import pallas_operands

from avcanet_jax import row_permutation
from avcanet_jax.swin3d import Windows, permutation_matrix


def _orders(shape):
    return Windows.whole(shape), Windows.of(shape, (8, 7, 7), (0, 0, 0)), Windows.of(shape, (8, 7, 7), (4, 3, 3))


def _grad(fn, rows, like):
    weights = jnp.cos(jnp.arange(like.size, dtype=jnp.float32)).reshape(like.shape)
    return jax.grad(lambda r: (fn(r).astype(jnp.float32) * weights).sum())(rows)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(8, 4, 14, 14, 24), (16, 2, 28, 14, 8)])  # Stage 2's map; another.
def test_the_kernel_regroups_exactly_as_maps_and_rows(dtype, shape):
    """Into the plain windows, on to the shifted ones, back to the map: each the same rows as
    `dst.rows(src.map(rows))`, and the same gradient (the kernel with the transposed matrix)."""
    whole, plain, shifted = _orders(shape)
    rows = jnp.asarray(np.random.default_rng(0).standard_normal(shape) * 1e3, dtype).reshape(-1, shape[-1])
    assert row_permutation.serves(math.prod(shape[1:4]), shape[-1], rows.shape[0])
    for src, dst in ((whole, plain), (plain, shifted), (shifted, whole)):
        matrix = permutation_matrix(src, dst)
        kernel = lambda r, m=matrix: row_permutation.permute(r, m)  # noqa: E731
        by_maps = lambda r, s=src, d=dst: d.rows(s.map(r))  # noqa: E731
        want = by_maps(rows)
        np.testing.assert_array_equal(kernel(rows), want)
        np.testing.assert_array_equal(_grad(kernel, rows, want), _grad(by_maps, rows, want))
        rows = want
    jaxpr = jax.make_jaxpr(lambda r: row_permutation.permute(r, permutation_matrix(plain, shifted)))(rows)
    assert rows.T.shape in {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}  # Read C-major.


def test_the_kernel_under_a_sharded_mesh():
    """Each device permutes its own examples' rows (32 examples over the data and fsdp axes, 8 per device)."""
    import flax.linen as nn

    from avcanet_jax.layers import DEFAULT_RULES

    shape = (32, 4, 14, 14, 8)
    whole, plain, shifted = _orders(shape)
    rows = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32).reshape(-1, shape[-1])
    matrix = permutation_matrix(plain, shifted)
    want = shifted.rows(plain.map(rows))
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        got = jax.jit(lambda r: row_permutation.permute(r, matrix))(jax.device_put(rows, split))
        grad = jax.jit(lambda r: _grad(lambda x: row_permutation.permute(x, matrix), r, want))(
            jax.device_put(rows, split)
        )
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grad, _grad(lambda r: shifted.rows(plain.map(r)), rows, want))


def test_where_the_kernel_declines():
    """Rows as wide as whole lanes (XLA holds them row-major), examples whose matrix would not stay in VMEM,
    examples too few for a block of whole tiles, and examples that do not fill whole sublane tiles."""
    assert row_permutation.serves(784, 192, 8 * 784)
    assert not row_permutation.serves(784, 256, 8 * 784)
    assert not row_permutation.serves(3136, 96, 2 * 3136)  # Stage 1's maps: the products cost more.
    assert not row_permutation.serves(784, 192, 4 * 784)  # 8 examples of 784 rows fill whole tiles.
    assert not row_permutation.serves(392, 96, 32 * 392)  # 392 rows end half-way through a sublane tile.

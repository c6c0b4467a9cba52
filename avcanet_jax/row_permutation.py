"""Token rows reordered within each example by one-hot products on the matrix unit, as a Pallas TPU kernel.

The Swin blocks keep a stage's tokens as rows in window order and regroup them where the windows change
(`swin3d.regroup`). Into and out of shifted windows XLA did that as one-hot products per axis, but it
first copied the C-major rows (how it holds rows narrower than 128 lanes, and how the kernels read them)
into a row-major layout and back. This kernel reads a block of whole examples' rows C-major and writes
them back C-major, reordered by one of two plans, whichever does less work (`plan`):

- `dense`: it turns the block in VMEM and multiplies each example's [m, C] rows by one [m, m] one-hot
  matrix (every output row is one input row times 1, summed in float32: exact). Its work grows as m^2 per
  example: stage 2's maps (784 tokens) gain (the base recipe's step on a v5e at 2 clips per chip 35.01 ->
  34.43 million cycles, stage 2's regrouping 1.42 -> 0.63), stage 1's (3,136) did not (35.14).
- `tiled`: each 128-row tile of the output is the sum, over the input tiles its rows come from, of that
  input tile times a [128, 128] one-hot block made in VMEM from the rows' sources. A window shift moves
  rows only between neighbouring windows, so each output tile draws on at most 9 of a block's 49 tiles
  in stage 1 (327 tile products, against 1,200 tiles' worth for the dense plan), and no slice is unaligned:
  stage 1's regrouping 2.25 -> 0.87 million cycles, the step 34.43 -> 33.54.

The backward pass is the same kernel with the inverse permutation.

Runs on CPU in Pallas's interpreter (tests) and compiles for TPUs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from avcanet_jax.fused_mlp import VECTOR_FLOPS
from avcanet_jax.window_attention import LANES, MXU, per_device, resident, run_kernel, tile_rows

# The dense plan's examples have at most this many tokens: their one-hot matrix stays in VMEM for the whole
# grid, 2 MB in bfloat16 at this bound.
MAX_TOKENS = 1024
# Vector operations per element of each one-hot block the tiled plan makes (an add, a compare, a select).
MASK_OPS = 3


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the kernel reorders a device's rows: `kind` "dense" or "tiled", `examples` per grid step's
    block, `flops` per block in the cost estimate's currency (MXU flops, vector work priced as
    `fused_mlp.VECTOR_FLOPS`), and for the tiled plan the input tiles each output tile draws on."""

    kind: str
    examples: int
    flops: int
    tiles: tuple[tuple[int, ...], ...] = ()


def _examples_per_block(m: int, examples: int) -> int:
    """The fewest whole examples of m rows whose rows fill whole 128-lane tiles (a C-major block's width)
    and that divide the examples on a device; 0 if none do."""
    for k in range(1, examples + 1):
        if examples % k == 0 and (k * m) % LANES == 0:
            return k
    return 0


def _block_sources(sources: np.ndarray, examples: int) -> np.ndarray:
    """[examples * m] the block row each row of a block of `examples` examples takes."""
    m = sources.size
    return (np.arange(examples)[:, None] * m + sources[None]).reshape(-1)


def plan(sources: np.ndarray, c: int, rows: int) -> Plan | None:
    """The cheaper plan for `rows` token rows C wide (per device) whose examples of m = len(sources) rows
    each take row `sources[i]` into row i; None where the kernel does not serve them: rows as wide as whole
    lanes (XLA holds them row-major), or too few examples for a block that fills whole lane tiles. The
    dense plan also needs examples small enough for their matrix to stay in VMEM and whose rows, once
    turned, fill whole sublane tiles (16 bfloat16 rows)."""
    m = sources.size
    examples = _examples_per_block(m, rows // m) if rows % m == 0 else 0
    if c % LANES == 0 or not examples:
        return None
    block = _block_sources(sources, examples) // LANES
    tiles = tuple(tuple(sorted(set(block[o : o + LANES].tolist()))) for o in range(0, block.size, LANES))
    pairs = sum(map(len, tiles))
    # Per tile product: the [C, 128] x [128, 128] product, making the one-hot block, adding to the sum.
    tiled = Plan("tiled", examples, pairs * LANES * (2 * c * LANES + VECTOR_FLOPS * (MASK_OPS * LANES + c)), tiles)
    if m > MAX_TOKENS or m % tile_rows(2):
        return tiled
    dense = Plan("dense", examples, 2 * examples * m * m * -(-c // MXU) * MXU)  # C padded to the matrix unit.
    return min((dense, tiled), key=lambda p: p.flops)


def serves(sources: np.ndarray, c: int, rows: int) -> bool:
    """Whether the kernel takes these rows (`plan`)."""
    return plan(np.asarray(sources), c, rows) is not None


def _exact(dtype):
    """float32 rows at full precision (no bfloat16 passes), so the products stay exact."""
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _dense_kernel(x_ref, p_ref, o_ref, *, examples: int, m: int):
    x = x_ref[...].T  # [examples * m, C]: each example's rows whole sublane tiles (`plan`).
    p = p_ref[...]
    acc = jnp.promote_types(x.dtype, jnp.float32)
    outs = [
        jnp.dot(p, x[i * m : (i + 1) * m], precision=_exact(x.dtype), preferred_element_type=acc).astype(x.dtype)
        for i in range(examples)
    ]
    o_ref[...] = jnp.concatenate(outs, axis=0).T


def _tiled_kernel(x_ref, s_ref, o_ref, *, tiles: tuple[tuple[int, ...], ...]):
    """Output tile o (128 C-major rows) = sum over its input tiles t of x[:, t] @ one-hot block, made from
    the block rows its rows take (`s_ref`): [r, j] is 1 where row j of tile o takes row r of tile t."""
    acc = jnp.promote_types(x_ref.dtype, jnp.float32)
    at = jax.lax.broadcasted_iota(jnp.int32, (LANES, LANES), 0)
    for o, sources in enumerate(tiles):
        taken = s_ref[:, o * LANES : (o + 1) * LANES]  # [1, 128]
        total = None
        for t in sources:
            onehot = (at == taken - t * LANES).astype(x_ref.dtype)
            part = jnp.dot(x_ref[:, t * LANES : (t + 1) * LANES], onehot, precision=_exact(x_ref.dtype),
                           preferred_element_type=acc)  # fmt: skip
            total = part if total is None else total + part
        o_ref[:, o * LANES : (o + 1) * LANES] = total.astype(o_ref.dtype)


def _call(rows: jax.Array, sources: np.ndarray, interpret) -> jax.Array:
    n, c = rows.shape
    how = plan(sources, c, n)
    if how is None:
        raise ValueError(f"row_permutation: {n} rows {c} wide in examples of {sources.size} are not what it serves")
    block = how.examples * sources.size
    spec = pl.BlockSpec((c, block), lambda i: (0, i))
    if how.kind == "dense":
        table = jnp.asarray(np.eye(sources.size, dtype=np.float32)[sources], rows.dtype)
        kernel = functools.partial(_dense_kernel, examples=how.examples, m=sources.size)
    else:
        table = jnp.asarray(_block_sources(sources, how.examples)[None], jnp.int32)
        kernel = functools.partial(_tiled_kernel, tiles=how.tiles)
    cost = pl.CostEstimate(
        flops=how.flops * (n // block),
        transcendentals=0,
        bytes_accessed=2 * n * c * rows.dtype.itemsize + table.size * table.dtype.itemsize,
    )
    out_shape = jax.ShapeDtypeStruct((c, n), rows.dtype)
    out = run_kernel(kernel, (rows.T, table), n // block, [spec, resident(table.shape)], spec, out_shape,
                     "parallel", cost, interpret)  # fmt: skip
    return out.T


def permute(rows: jax.Array, sources: np.ndarray, interpret: bool | None = None) -> jax.Array:
    """Token rows [N, C] (examples of m = len(sources) rows back to back) -> each example's row i its row
    `sources[i]`, as one Pallas kernel per device under a mesh that shards the examples. The gradient is
    the same kernel with the inverse permutation."""
    sources = np.asarray(sources)
    if not np.array_equal(np.sort(sources), np.arange(sources.size)):
        raise ValueError("row_permutation: `sources` must be a permutation of each example's rows")
    inverse = np.argsort(sources)

    @jax.custom_vjp
    def run(r):
        return _call(r, sources, interpret)

    run.defvjp(lambda r: (_call(r, sources, interpret), None), lambda _, d: (_call(d, inverse, interpret),))
    return per_device(run, rows)

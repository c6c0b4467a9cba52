"""Token rows reordered within each example by a one-hot product on the matrix unit, as a Pallas TPU kernel.

The Swin blocks keep a stage's tokens as rows in window order and regroup them where the windows change
(`swin3d.regroup`). Into and out of shifted windows XLA did that as one-hot products per axis, but it
first copied the C-major rows (how it holds rows narrower than 128 lanes, and how the kernels read them)
into a row-major layout and back: stage 2's move into shifted windows, forward and backward, cost 0.84
million cycles on a v5e at 2 clips per chip. This kernel reads a block of whole examples' rows C-major,
turns them in VMEM, multiplies each example's [m, C] rows by one [m, m] one-hot matrix (every output row is
one input row times 1, summed in float32: exact) and writes them back C-major: 0.12 million cycles there.
The backward pass is the same kernel with the transposed matrix.

Its work grows as m^2 per example: stage 2's maps (784 tokens) gain (the base recipe's step 35.01 ->
34.43 million cycles, stage 2's regrouping 1.42 -> 0.63), stage 1's (3,136) do not (its regrouping 2.25
-> 2.46 and its patch merging 0.50 -> 0.98, the step 35.14 with both stages), hence MAX_TOKENS.

Runs on CPU in Pallas's interpreter (tests) and compiles for TPUs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from avcanet_jax.window_attention import LANES, MXU, per_device, resident, run_kernel, tile_rows

# Examples of at most this many tokens (measured: 784 pays, 3,136 does not; between, unmeasured). Their
# one-hot matrix stays in VMEM for the whole grid: 2 MB in bfloat16 at this bound.
MAX_TOKENS = 1024


def _examples_per_block(m: int, examples: int) -> int:
    """The fewest whole examples of m rows whose rows fill whole 128-lane tiles (a C-major block's width)
    and that divide the examples on a device; 0 if none do."""
    for k in range(1, examples + 1):
        if examples % k == 0 and (k * m) % LANES == 0:
            return k
    return 0


def serves(m: int, c: int, rows: int) -> bool:
    """Whether the kernel takes `rows` token rows C wide (per device), m per example: rows narrower than
    whole lanes (held C-major), examples small enough for their matrix to stay in VMEM and whose rows,
    once turned, fill whole sublane tiles (16 bfloat16 rows), and blocks of whole examples that fill
    whole lane tiles."""
    fits = c % LANES != 0 and m <= MAX_TOKENS and m % tile_rows(2) == 0 and rows % m == 0  # bf16's 16 rows.
    return fits and _examples_per_block(m, rows // m) > 0


def _kernel(x_ref, p_ref, o_ref, *, examples: int, m: int):
    x = x_ref[...].T  # [examples * m, C]: each example's rows whole sublane tiles (`serves`).
    p = p_ref[...]
    acc = jnp.promote_types(x.dtype, jnp.float32)
    exact = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None  # float32 rows: no bfloat16 passes.
    outs = [
        jnp.dot(p, x[i * m : (i + 1) * m], precision=exact, preferred_element_type=acc).astype(x.dtype)
        for i in range(examples)
    ]
    o_ref[...] = jnp.concatenate(outs, axis=0).T


def _call(rows: jax.Array, matrix: jax.Array, interpret) -> jax.Array:
    n, c = rows.shape
    m = matrix.shape[0]
    if not serves(m, c, n):
        raise ValueError(f"row_permutation: {n} rows {c} wide in examples of {m} are not what it serves")
    examples = _examples_per_block(m, n // m)
    block = examples * m
    spec = pl.BlockSpec((c, block), lambda i: (0, i))
    itemsize = rows.dtype.itemsize
    cost = pl.CostEstimate(
        flops=2 * n * m * -(-c // MXU) * MXU,  # Per example [m, m] x [m, C], C padded to the matrix unit.
        transcendentals=0,
        bytes_accessed=2 * n * c * itemsize + matrix.size * matrix.dtype.itemsize,
    )
    kernel = functools.partial(_kernel, examples=examples, m=m)
    out_shape = jax.ShapeDtypeStruct((c, n), rows.dtype)
    out = run_kernel(kernel, (rows.T, matrix), n // block, [spec, resident(matrix.shape)], spec, out_shape,
                     "parallel", cost, interpret)  # fmt: skip
    return out.T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _permute(rows, matrix, interpret):
    return _call(rows, matrix, interpret)


def _permute_fwd(rows, matrix, interpret):
    return _call(rows, matrix, interpret), matrix


def _permute_bwd(interpret, matrix, d_out):
    return _call(d_out, matrix.T, interpret), None


_permute.defvjp(_permute_fwd, _permute_bwd)


def permute(rows: jax.Array, matrix: np.ndarray, interpret: bool | None = None) -> jax.Array:
    """Token rows [N, C] (examples of m rows back to back) -> each example's rows `matrix @ rows` (`matrix`
    [m, m] one-hot: output row i is input row j where matrix[i, j] = 1), as one Pallas kernel per device
    under a mesh that shards the examples."""
    weights = jnp.asarray(matrix, rows.dtype)
    return per_device(lambda r, w: _permute(r, w, interpret), rows, weights)

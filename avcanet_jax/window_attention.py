"""Window attention of Video Swin: softmax(q k^T / sqrt(d) + relative bias + shift mask) v, per window and head.

Four implementations of one function, `attention(qkv, bias, mask, heads, impl)`:

- "xla": plain jnp, the reference; XLA writes every [windows, heads, V, V] score tensor (and, in the
  backward pass, its gradient) to memory. Stage 1 of Swin-T has 196-token windows, so at 2 clips per
  chip one layer's scores are 236 MB in float32; on a TPU v5e this path is most of the train step.
- "dot_product": `jax.nn.dot_product_attention` (windows folded into the head axis where a shift mask
  needs it). Same numbers; JAX picks XLA's implementation unless told otherwise, so it moves the same
  bytes.
- "cudnn": the same call with `implementation="cudnn"`: cuDNN's fused (flash) attention on NVIDIA GPUs,
  which keeps the scores on chip, adds the bias inside and returns the bias gradient. It needs bf16 or
  fp16 inputs and an even window volume in training (196 is), and runs nowhere else. Unshifted blocks
  keep windows as the batch axis with one [1, heads, V, V] bias; shifted blocks fold windows into heads
  so that each window's mask is part of a batch-1 bias.
- "pallas": a Pallas TPU kernel per block of windows, forward and backward, that keeps each window's
  scores in on-chip memory. A window's full score row is there, so the backward pass recomputes the
  softmax instead of saving it, and the bias gradient (the sum over windows of the score gradient) is
  reduced inside the kernel into one [heads, V, V] block. q, k and v stay packed as the qkv projection
  writes them, [windows, V, 3 * C], so no head_dim-32 array is ever laid out in HBM with 128 lanes.
  The qkv projection's bias is added inside too, so its gradient (a sum over every token) is reduced
  in the backward kernel from values already on chip instead of in a separate pass over HBM.
  Runs on CPU in Pallas's interpreter (tests), and compiles for TPUs; not for GPUs.
  `sublayer` is the same kernel with the rest of the block's attention half inside (LayerNorm, qkv
  projection, output projection, stochastic depth, residual): it reads the token rows C-major, as XLA
  holds rows narrower than whole lanes, and returns its result and their gradient so (the Swin blocks
  use it at such widths, on maps that need no padding).

`qkv` is [N, V, 3C] with N = batch x windows (windows fastest), `bias` [heads, V, V], `mask` [nW, V, V]
(0 or -100, the shifted-window mask of window n % nW) or None, `qkv_bias` [3C] (added to `qkv` first).
The result is [N, V, C]. `qkv` may also be token rows [N * V, 3C] (how the Swin blocks hold tokens), and
the result is then [N * V, C]: the Pallas kernel reads blocks of whole windows' rows as they are (a
block's rows must fill whole tiles, 16 bf16 rows; where no block of windows does, the rows are split
into windows first), the other paths split them into windows.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from avcanet_jax.layers import DEFAULT_RULES, accumulator, normalized

IMPLEMENTATIONS = ("xla", "dot_product", "cudnn", "pallas")
# Per grid step the kernel holds a block of windows in VMEM, with several float32 [block, V, V] score-sized
# arrays live per head in the backward pass; this bounds one of them (8 windows of 196 tokens), and
# VMEM_LIMIT lifts the compiler's default scoped-VMEM limit enough for all of them.
SCORE_BYTES = 5 * 2**18
QKV_BYTES = 2 * 2**20  # And this its [block, V, 3C] input (wide at stage 4: 3C = 2304).
VMEM_LIMIT = 64 * 2**20
MXU = 128  # Matrix-unit tile edge (v4, v5e, v5p); products are costed with dimensions padded to it.


def reference(qkv: jax.Array, bias: jax.Array, mask, heads: int, dropout=None) -> jax.Array:
    """The plain path; `dropout` (a callable on the probabilities) is the attention dropout."""
    n, vol, c3 = qkv.shape
    head_dim = c3 // 3 // heads
    qkv = qkv.reshape(n, vol, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * head_dim**-0.5, qkv[1], qkv[2]
    attn = jnp.einsum("nhqd,nhkd->nhqk", q, k) + bias.astype(q.dtype)[None]
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.reshape(n // nw, nw, heads, vol, vol) + mask.astype(attn.dtype)[None, :, None]
        attn = attn.reshape(n, heads, vol, vol)
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
    if dropout is not None:
        attn = dropout(attn)
    return jnp.einsum("nhqk,nhkd->nhqd", attn, v).transpose(0, 2, 1, 3).reshape(n, vol, -1)


def dot_product(qkv: jax.Array, bias: jax.Array, mask, heads: int, implementation: str | None = None) -> jax.Array:
    """Through `jax.nn.dot_product_attention` ([batch, V, heads, d] operands). Without a mask the windows
    are the batch and the relative bias is one [1, heads, V, V] array; with one, windows are folded into
    heads, [B, V, nW * heads, d], so the per-window mask and the relative bias become one
    [1, nW * heads, V, V] bias (the cuDNN kernel takes a bias of batch 1 or B, not one per window)."""
    n, vol, c3 = qkv.shape
    head_dim = c3 // 3 // heads
    call = functools.partial(jax.nn.dot_product_attention, scale=head_dim**-0.5, implementation=implementation)
    if mask is None:
        qkv = qkv.reshape(n, vol, 3, heads, head_dim)
        return call(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], bias=bias.astype(qkv.dtype)[None]).reshape(n, vol, -1)
    nw = mask.shape[0]
    b = n // nw
    qkv = qkv.reshape(b, nw, vol, 3, heads, head_dim)
    q, k, v = (qkv[:, :, :, i].transpose(0, 2, 1, 3, 4).reshape(b, vol, nw * heads, head_dim) for i in range(3))
    full_bias = bias.astype(q.dtype)[None] + mask.astype(q.dtype)[:, None]
    out = call(q, k, v, bias=full_bias.reshape(1, nw * heads, vol, vol))
    return out.reshape(b, vol, nw, heads * head_dim).transpose(0, 2, 1, 3).reshape(n, vol, -1)


def _heads(qkv, heads: int, h: int):
    c = qkv.shape[-1] // 3
    d = c // heads
    return (qkv[:, :, i * c + h * d : i * c + (h + 1) * d] for i in range(3))


def _probabilities(q, k, bias_ref, mask, h: int, scale: float):
    """Softmax over keys in float32, as the reference computes it."""
    s = jnp.einsum("bqd,bkd->bqk", q, k, preferred_element_type=accumulator(q.dtype)) * scale
    s = s + bias_ref[h].astype(s.dtype)[None]
    if mask is not None:
        s = s + mask.astype(s.dtype)
    s = s.astype(jnp.float32)
    p = jnp.exp(s - s.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _windows(ref, vol: int) -> jax.Array:
    """A block as [windows, V, width]: a block of token rows [windows * V, width] is split in VMEM."""
    x = ref[...]
    return x.reshape(-1, vol, x.shape[-1]) if x.ndim == 2 else x


def _with_bias(qkv_ref, qkv_bias_ref, vol: int):
    """qkv + its projection's bias, added in qkv's dtype as `nnx.Linear` adds it."""
    return _windows(qkv_ref, vol) + qkv_bias_ref[...].astype(qkv_ref.dtype)[None]


def _mask(mask_ref, start: int, count: int):
    """The masks of windows start .. start + count of a block (None unmasked)."""
    return None if mask_ref is None else mask_ref[pl.ds(start, count)]


def _attend(qkv, bias_ref, mask, heads: int, scale: float):
    """[windows, V, C] attention outputs of a block's qkv [windows, V, 3C], head by head."""
    outs = []
    for h in range(heads):
        q, k, v = _heads(qkv, heads, h)
        p = _probabilities(q, k, bias_ref, mask, h, scale)
        outs.append(jnp.einsum("bqk,bkd->bqd", p.astype(v.dtype), v, preferred_element_type=accumulator(v.dtype)))
    return jnp.concatenate(outs, axis=-1)


def _forward_kernel(*refs, heads: int, scale: float, masked: bool):
    qkv_ref, qkv_bias_ref, bias_ref, *rest = refs
    mask_ref = rest.pop(0) if masked else None
    (o_ref,) = rest
    qkv = _with_bias(qkv_ref, qkv_bias_ref, bias_ref.shape[-1])
    out = _attend(qkv, bias_ref, _mask(mask_ref, 0, qkv.shape[0]), heads, scale)
    o_ref[...] = out.reshape(o_ref.shape).astype(o_ref.dtype)


def _backward_kernel(*refs, heads: int, scale: float, masked: bool):
    qkv_ref, qkv_bias_ref, bias_ref, *rest = refs
    mask_ref = rest.pop(0) if masked else None
    do_ref, dqkv_ref, dqkv_bias_ref, dbias_ref = rest
    zero_on_first_step(dqkv_bias_ref, dbias_ref)
    vol = bias_ref.shape[-1]
    qkv, do = _with_bias(qkv_ref, qkv_bias_ref, vol), _windows(do_ref, vol)
    dqkv = _attend_backward(qkv, do, bias_ref, _mask(mask_ref, 0, qkv.shape[0]), heads, scale, dbias_ref)
    dqkv_ref[...] = dqkv.reshape(dqkv_ref.shape).astype(dqkv_ref.dtype)
    dqkv_bias_ref[...] += dqkv.astype(jnp.float32).sum(axis=(0, 1))[None]


def zero_on_first_step(*refs):
    """Gradients summed over the grid start from zero (their blocks stay resident, the steps run in order)."""

    @pl.when(pl.program_id(0) == 0)
    def _():
        for ref in refs:
            ref[...] = jnp.zeros_like(ref)


def _attend_backward(qkv, do, bias_ref, mask, heads: int, scale: float, dbias_ref):
    """d qkv [windows, V, 3C] of a block from d out [windows, V, C], the softmax recomputed from qkv; adds
    the block's relative-bias gradient (the sum over its windows of the score gradient) to `dbias_ref`."""
    d = do.shape[-1] // heads
    grads, dbias, acc = [[], [], []], [], accumulator(qkv.dtype)
    for h in range(heads):
        q, k, v = _heads(qkv, heads, h)
        p = _probabilities(q, k, bias_ref, mask, h, scale)
        do_h = do[:, :, h * d : (h + 1) * d]
        dp = jnp.einsum("bqd,bkd->bqk", do_h, v, preferred_element_type=acc).astype(jnp.float32)
        ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))  # Softmax's backward; scores never left VMEM.
        grads[0].append(jnp.einsum("bqk,bkd->bqd", ds.astype(k.dtype), k, preferred_element_type=acc) * scale)
        grads[1].append(jnp.einsum("bqk,bqd->bkd", ds.astype(q.dtype), q, preferred_element_type=acc) * scale)
        grads[2].append(jnp.einsum("bqk,bqd->bkd", p.astype(do.dtype), do_h, preferred_element_type=acc))
        dbias.append(ds.sum(axis=0))
    dbias_ref[...] += jnp.stack(dbias)
    return jnp.concatenate(grads[0] + grads[1] + grads[2], axis=-1)


def block_windows(n: int, nw: int, vol: int, width: int = 0, itemsize: int = 2, rows: int = 1) -> int:
    """Windows per grid step: a divisor of the mask's period `nw` (so a block sees one run of masks) and
    of `n`, as large as SCORE_BYTES and QKV_BYTES allow for one block's float32 scores and its
    [block, V, `width`] input (the smallest one otherwise), and whose block * V token rows are a
    multiple of `rows` (a block of a [tokens, width] array must span whole tiles); 0 when none is."""
    period = nw if nw > 1 else n
    best = 0
    for wb in range(1, period + 1):
        fits = wb * vol * vol * 4 <= SCORE_BYTES and wb * vol * width * itemsize <= QKV_BYTES
        if period % wb == 0 and n % wb == 0 and (wb * vol) % rows == 0 and (fits or not best):
            best = wb
    return best


def tile_rows(itemsize: int) -> int:
    """Rows of one TPU tile of a 2-D array of this item size (8 x 32-bit words, 16 bf16 rows)."""
    return 8 * max(1, 4 // itemsize)


def _rows_spec(wb: int, vol: int, width: int, flat: bool) -> pl.BlockSpec:
    """Grid step i's block of windows: [wb, V, width] of a [windows, V, width] array, or its wb * V rows
    of a [tokens, width] one (`flat`)."""
    if flat:
        return pl.BlockSpec((wb * vol, width), lambda i: (i, 0))
    return pl.BlockSpec((wb, vol, width), lambda i: (i, 0, 0))


def _specs(vol, c3, heads, nw, wb, masked, flat):
    specs = [
        _rows_spec(wb, vol, c3, flat),
        pl.BlockSpec((1, c3), lambda i: (0, 0)),
        pl.BlockSpec((heads, vol, vol), lambda i: (0, 0, 0)),
    ]
    if masked:
        period = nw // wb
        specs.append(pl.BlockSpec((wb, vol, vol), lambda i: (i % period, 0, 0)))
    return specs


def _blocks(qkv, bias, mask) -> tuple[int, int, int, int, int, bool]:
    """(windows n, tokens V, width 3C, mask period nW, windows per grid step, flat) of one call; `flat`:
    `qkv` is [n * V, 3C] token rows rather than [n, V, 3C] windows."""
    flat, vol, c3 = qkv.ndim == 2, bias.shape[-1], qkv.shape[-1]
    n = qkv.shape[0] // vol if flat else qkv.shape[0]
    nw = mask.shape[0] if mask is not None else 1
    rows = tile_rows(qkv.dtype.itemsize) if flat else 1
    return n, vol, c3, nw, block_windows(n, nw, vol, c3, qkv.dtype.itemsize, rows), flat


def _cost(n, vol, c3, heads, matmuls: int, io_bytes: int, masked: bool, projections=(0, 0)) -> pl.CostEstimate:
    """What the kernel makes the chip do: its `matmuls` [V, V] x [V, d] products per window and head and,
    in the fused sublayer, `projections` = (products the size of the qkv projection, [V, C] x [C, 3C], and
    of the output projection, [V, C] x [C, C]) per window, with every dimension but a window's rows padded
    to the matrix unit (a head_dim of 32 fills a quarter of a 128-wide MXU, so the attention products are
    about 5x the model's FLOPs), one exp per score, and the HBM bytes it reads and writes: the blocks,
    weights and biases (`io_bytes`) and, when masked, each window's float32 mask. Vector work (softmax,
    LayerNorm: about 9 operations per score forward, 16 backward) is not counted: it takes less time than
    these padded products (`fused_mlp.VECTOR_FLOPS` prices one vector operation)."""
    d, c = c3 // 3 // heads, c3 // 3
    padded = lambda x: -(-x // MXU) * MXU  # noqa: E731
    per_product = 2 * vol * padded(vol) * padded(d)
    per_projection = 2 * vol * padded(c) * (projections[0] * padded(c3) + projections[1] * padded(c))
    return pl.CostEstimate(
        flops=n * (matmuls * heads * per_product + per_projection),
        transcendentals=n * heads * vol * vol,
        bytes_accessed=io_bytes + (n * vol * vol * 4 if masked else 0),
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _pallas(qkv, qkv_bias, bias, mask, heads: int, interpret: bool | None):
    return _pallas_forward(qkv, qkv_bias, bias, mask, heads, interpret)


def _pallas_forward(qkv, qkv_bias, bias, mask, heads, interpret):
    n, vol, c3, nw, wb, flat = _blocks(qkv, bias, mask)
    masked, itemsize = mask is not None, qkv.dtype.itemsize
    out_shape = (n * vol, c3 // 3) if flat else (n, vol, c3 // 3)
    args = (qkv, qkv_bias.reshape(1, c3), bias) + ((mask,) if masked else ())
    kernel = functools.partial(_forward_kernel, heads=heads, scale=(c3 // 3 // heads) ** -0.5, masked=masked)
    cost = _cost(n, vol, c3, heads, 2, n * vol * (c3 + c3 // 3) * itemsize + bias.size * bias.dtype.itemsize, masked)
    specs, out_spec = _specs(vol, c3, heads, nw, wb, masked, flat), _rows_spec(wb, vol, c3 // 3, flat)
    out = jax.ShapeDtypeStruct(out_shape, qkv.dtype)
    return run_kernel(kernel, args, n // wb, specs, out_spec, out, "parallel", cost, interpret)


def on_platform(call, interpret: bool | None):
    """`call(interpret)`: compiled with Mosaic when lowering for a TPU, interpreted for any other platform
    (decided by the platform the program is lowered for, so an ahead-of-time TPU compile on a CPU machine
    gets the real kernel)."""
    if interpret is not None:
        return call(interpret)
    return jax.lax.platform_dependent(tpu=lambda: call(False), default=lambda: call(True))


def run_kernel(
    kernel, args, grid: int, in_specs, out_specs, out_shape, semantics: str, cost, interpret, scratch=(), sums=()
):
    """`kernel` on `args` as a `pallas_call` over a 1-D grid of `grid` steps (`semantics`: "parallel", or
    "arbitrary" where steps sum into resident blocks), with VMEM_LIMIT and its cost estimate, compiled for
    TPUs or interpreted elsewhere (`on_platform`).

    `sums`: the outputs (indices) that the steps sum into, whole arrays in resident blocks. Those of a
    type narrower than float32 (bfloat16 weight gradients) are summed in float32 VMEM scratch, which the
    kernel gets in their place, and rounded into their output once, after the last step: the same values
    as summing into a float32 output and rounding it outside, without the separate rounding pass over
    HBM that XLA would run (stage 4's MLP: 71,000 cycles per weight matrix on a v5e)."""
    outputs = out_shape if isinstance(out_shape, (list, tuple)) else [out_shape]
    narrow = [i for i in sums if outputs[i].dtype != accumulator(outputs[i].dtype)]
    if narrow:
        kernel = _summed_in_scratch(kernel, len(args), len(outputs), len(scratch), narrow, grid)
        scratch = [*scratch, *(pltpu.VMEM(outputs[i].shape, accumulator(outputs[i].dtype)) for i in narrow)]
    call = lambda interpret: pl.pallas_call(  # noqa: E731
        kernel,
        grid=(grid,),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=list(scratch),
        compiler_params=pltpu.CompilerParams(dimension_semantics=(semantics,), vmem_limit_bytes=VMEM_LIMIT),
        cost_estimate=cost,
        interpret=interpret,
    )(*args)
    return on_platform(call, interpret)


def _summed_in_scratch(kernel, inputs: int, outputs: int, scratch: int, narrow: list[int], grid: int):
    """`kernel` with its outputs `narrow` replaced by the float32 scratch refs after its own `scratch`,
    which are rounded into those outputs after the last grid step (see `run_kernel`)."""

    def wrapped(*refs):
        outs, sums = list(refs[inputs : inputs + outputs]), refs[inputs + outputs + scratch :]
        targets = [outs[i] for i in narrow]
        for i, ref in zip(narrow, sums, strict=True):
            outs[i] = ref
        kernel(*refs[:inputs], *outs, *refs[inputs + outputs : inputs + outputs + scratch])

        @pl.when(pl.program_id(0) == grid - 1)
        def _():
            for target, ref in zip(targets, sums, strict=True):
                target[...] = ref[...].astype(target.dtype)

    return wrapped


def _pallas_fwd(qkv, qkv_bias, bias, mask, heads, interpret):
    return _pallas_forward(qkv, qkv_bias, bias, mask, heads, interpret), (qkv, qkv_bias, bias, mask)


def _pallas_bwd(heads, interpret, residuals, do):
    qkv, qkv_bias, bias, mask = residuals
    n, vol, c3, nw, wb, flat = _blocks(qkv, bias, mask)
    masked, itemsize = mask is not None, qkv.dtype.itemsize
    args = (qkv, qkv_bias.reshape(1, c3), bias) + ((mask,) if masked else ()) + (do,)
    kernel = functools.partial(_backward_kernel, heads=heads, scale=(c3 // 3 // heads) ** -0.5, masked=masked)
    out_specs = [_rows_spec(wb, vol, c3, flat), resident((1, c3)), resident((heads, vol, vol))]
    out_shape = [
        jax.ShapeDtypeStruct(qkv.shape, qkv.dtype),
        jax.ShapeDtypeStruct((1, c3), qkv_bias.dtype),
        jax.ShapeDtypeStruct((heads, vol, vol), bias.dtype),
    ]
    io = n * vol * (2 * c3 + c3 // 3) * itemsize + 2 * bias.size * bias.dtype.itemsize
    cost = _cost(n, vol, c3, heads, 5, io, masked)
    specs = _specs(vol, c3, heads, nw, wb, masked, flat) + [_rows_spec(wb, vol, c3 // 3, flat)]
    # The bias gradients are summed over the grid in resident blocks, so the steps run in order.
    dqkv, dqkv_bias, dbias = run_kernel(
        kernel, args, n // wb, specs, out_specs, out_shape, "arbitrary", cost, interpret, sums=(1, 2)
    )
    mask_grad = None if mask is None else jnp.zeros_like(mask)
    return dqkv, dqkv_bias.reshape(c3), dbias, mask_grad


_pallas.defvjp(_pallas_fwd, _pallas_bwd)


def pallas(
    qkv: jax.Array, bias: jax.Array, mask, heads: int, qkv_bias=None, interpret: bool | None = None
) -> jax.Array:
    """The Pallas kernel, each device on its own share of the windows when a mesh shards the batch.

    A Pallas call is opaque to XLA's partitioner, so under a mesh it runs inside `jax.shard_map` over the
    mesh axes the logical "batch" axis maps to (windows are batch-major); the bias gradient of each
    share is then summed over those axes by shard_map's transpose. `interpret`: by default the kernel is
    compiled for TPUs and interpreted elsewhere.
    """
    mask = None if mask is None else jnp.asarray(mask, jnp.float32)
    qkv_bias = jnp.zeros(qkv.shape[-1], qkv.dtype) if qkv_bias is None else qkv_bias
    return per_device(functools.partial(_tiled, heads=heads, interpret=interpret), qkv, qkv_bias, bias, mask)


def _tiled(qkv, qkv_bias, bias, mask, heads: int, interpret: bool | None):
    """`_pallas` on token rows, or on windows when no block of whole windows spans whole tiles of rows
    (then XLA splits the rows into windows, a copy)."""
    if qkv.ndim == 2 and not _blocks(qkv, bias, mask)[4]:
        windows = qkv.reshape(-1, bias.shape[-1], qkv.shape[-1])
        return _pallas(windows, qkv_bias, bias, mask, heads, interpret).reshape(qkv.shape[0], -1)
    return _pallas(qkv, qkv_bias, bias, mask, heads, interpret)


# The attention half of a Swin block in one kernel: x + DropPath(proj(attention(qkv(LayerNorm(x))))) of
# token rows. Stage 1's rows are 96 wide; XLA lays such [tokens, 96] arrays out with the tokens on the 128
# lanes (no padding), and any kernel that reads or writes them row-major makes it switch the whole residual
# stream to 96 of 128 lanes, and keeps the LayerNorm's backward out of the products it fuses with. So for
# rows narrower than whole lanes this kernel reads the rows transposed, [C, tokens] blocks (a bitcast of
# XLA's layout), and returns its result and the rows' gradient the same way; rows of whole lanes (384) it
# reads as they are. The normalised tokens and qkv stay in VMEM, and the attention outputs go to HBM once,
# row-major, for the output projection's weight gradient in the backward kernel.
LANES = 128


# The widest token rows the fused sublayer serves: measured faster than the kernel on qkv with XLA's
# LayerNorm, projections and residual around it at 96 and 192 (stages 1-2, C-major) and 384 (stage 3,
# row-major: 0.71 -> 0.56 million cycles per block, forward and backward), slower at 768 (stage 4, 2,048
# tokens per chip: 0.57 -> 0.62), where recomputing the wide qkv projection costs more than the passes
# over HBM it saves.
SUBLAYER_MAX_WIDTH = 384


def sublayer_pays(c: int) -> bool:
    """Whether blocks with rows C wide attend through the fused sublayer (see SUBLAYER_MAX_WIDTH)."""
    return c <= SUBLAYER_MAX_WIDTH


def block_rows_windows(n: int, nw: int, vol: int, multiple: int = LANES) -> int:
    """Windows per grid step of the fused sublayer: the fewest whose tokens fill whole tiles, a `multiple`
    of tokens (C-major [C, tokens] blocks: 128 lanes, 32 windows of 196; row-major ones: a tile's rows, 16
    in bf16), dividing `n` and either dividing the mask period `nw` or a multiple of it; all `n` windows
    when none does (a block may always span a whole array)."""
    for wb in range(1, n + 1):
        if n % wb == 0 and (wb * vol) % multiple == 0 and (nw % wb == 0 or wb % nw == 0):
            return wb
    return n


def layer_norm_backward(dxn, xhat, rstd, scale_ref, axis: int = 0):
    """The gradient of a block's tokens from that of its normalised tokens (LayerNorm over `axis`)."""
    g = dxn * scale_ref[...]
    return rstd * (g - g.mean(axis=axis, keepdims=True) - xhat * (g * xhat).mean(axis=axis, keepdims=True))


def _sublayer_qkv(x_ref, scale_ref, shift_ref, w_ref, qkv_bias_ref, vol: int, eps: float, c_major: bool):
    """(qkv + bias [windows, V, 3C], normalised tokens, x_hat, 1 / std) of a block of tokens, [C, tokens]
    (`c_major`) or [tokens, C]."""
    xn, xhat, rstd = normalized(x_ref, scale_ref, shift_ref, eps, axis=0 if c_major else 1)
    acc, contract = accumulator(xn.dtype), 0 if c_major else 1
    qkv = jax.lax.dot_general(xn, w_ref[...], (((contract,), (0,)), ((), ())), preferred_element_type=acc)
    qkv = qkv.astype(xn.dtype)
    return _windows(qkv, vol) + qkv_bias_ref[...].astype(xn.dtype)[None], xn, xhat, rstd


def _by_chunks(qkv_s, chunk: int, vol: int, body):
    """`body(windows, rows)` for each run of `chunk` windows of a block held in `qkv_s` (a loop, not unrolled:
    the heads already are), with `windows` their index range in [windows, V, 3C] and `rows` in [tokens, .]."""

    def step(j, carry):
        start = pl.multiple_of(j * chunk, chunk)
        body(pl.ds(start, chunk), pl.ds(pl.multiple_of(j * chunk * vol, chunk * vol), chunk * vol))
        return carry

    jax.lax.fori_loop(0, qkv_s.shape[0] // chunk, step, 0)


def _sublayer_forward_kernel(
    *refs, heads: int, scale: float, masked: bool, dropped: bool, eps: float, chunk: int, c_major: bool
):
    x_ref, scale_ref, shift_ref, w_ref, qkv_bias_ref, proj_ref, proj_bias_ref, bias_ref, *rest = refs
    mask_ref = rest.pop(0) if masked else None
    keep_ref = rest.pop(0) if dropped else None
    out_ref, o_ref, qkv_s = rest
    vol = bias_ref.shape[-1]
    qkv_s[...] = _sublayer_qkv(x_ref, scale_ref, shift_ref, w_ref, qkv_bias_ref, vol, eps, c_major)[0]

    def body(windows, rows):
        mask = None if mask_ref is None else mask_ref[windows]
        out = _attend(qkv_s[windows], bias_ref, mask, heads, scale)
        o_ref[rows, :] = out.reshape(-1, out.shape[-1]).astype(o_ref.dtype)

    _by_chunks(qkv_s, chunk, vol, body)
    # The output projection, stochastic depth and the residual, in the layout the rows came in.
    o = o_ref[...]
    y = jnp.dot(o, proj_ref[...], preferred_element_type=accumulator(o.dtype)).astype(o.dtype)
    y = y + proj_bias_ref[...].astype(o.dtype)
    y = y.T if c_major else y
    if keep_ref is not None:
        y = (y.astype(accumulator(o.dtype)) * keep_ref[...]).astype(o.dtype)
    out_ref[...] = (x_ref[...] + y).astype(out_ref.dtype)


def _sublayer_backward_kernel(
    *refs, heads: int, scale: float, masked: bool, dropped: bool, eps: float, chunk: int, c_major: bool
):
    x_ref, scale_ref, shift_ref, w_ref, qkv_bias_ref, proj_ref, proj_bias_ref, bias_ref, *rest = refs
    mask_ref = rest.pop(0) if masked else None
    keep_ref = rest.pop(0) if dropped else None
    o_ref, dout_ref, dx_ref, dscale_ref, dshift_ref, dw_ref, dqkv_bias_ref, dproj_ref, dproj_bias_ref, *rest = rest
    dbias_ref, qkv_s, dy_s, dqkv_s = rest
    zero_on_first_step(dscale_ref, dshift_ref, dw_ref, dqkv_bias_ref, dproj_ref, dproj_bias_ref, dbias_ref)
    vol = bias_ref.shape[-1]
    qkv, xn, xhat, rstd = _sublayer_qkv(x_ref, scale_ref, shift_ref, w_ref, qkv_bias_ref, vol, eps, c_major)
    acc, tokens = accumulator(xn.dtype), 1 if c_major else 0
    qkv_s[...] = qkv
    dout = dout_ref[...]  # [C, tokens] or [tokens, C].
    dy = dout if keep_ref is None else (dout.astype(acc) * keep_ref[...]).astype(dout.dtype)
    dy_s[...] = dy.T if c_major else dy  # The output projection's backward, on rows [tokens, C].
    dy = dy_s[...]
    dproj_ref[...] += jax.lax.dot_general(o_ref[...], dy, (((0,), (0,)), ((), ())), preferred_element_type=acc)
    dproj_bias_ref[...] += dy.astype(acc).sum(axis=0, keepdims=True)

    def body(windows, rows):
        mask = None if mask_ref is None else mask_ref[windows]
        # The attention outputs' gradient, a run of windows at a time (the whole block's would not fit VMEM
        # beside the rest at stage 2).
        do = jax.lax.dot_general(dy_s[rows, :], proj_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=acc)
        do = _windows(do.astype(dy_s.dtype), vol)
        part = _attend_backward(qkv_s[windows], do, bias_ref, mask, heads, scale, dbias_ref)
        dqkv_bias_ref[...] += part.astype(jnp.float32).sum(axis=(0, 1))[None]
        # Rounded as XLA rounds the gradient of the product it then multiplies.
        dqkv_s[rows, :] = part.reshape(-1, part.shape[-1]).astype(dqkv_s.dtype)

    _by_chunks(qkv_s, chunk, vol, body)
    dqkv = dqkv_s[...]  # [tokens, 3C]
    dw_ref[...] += jax.lax.dot_general(xn, dqkv, (((tokens,), (0,)), ((), ())), preferred_element_type=acc)
    if c_major:
        dxn = jax.lax.dot_general(w_ref[...], dqkv, (((1,), (1,)), ((), ())), preferred_element_type=acc)
    else:
        dxn = jax.lax.dot_general(dqkv, w_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=acc)
    dxn = dxn.astype(xn.dtype).astype(acc)
    dscale_ref[...] += (dxn * xhat).sum(axis=tokens, keepdims=True)
    dshift_ref[...] += dxn.sum(axis=tokens, keepdims=True)
    dx = layer_norm_backward(dxn, xhat, rstd, scale_ref, axis=1 - tokens).astype(dout.dtype)
    dx_ref[...] = (dout + dx).astype(dx_ref.dtype)  # The residual's gradient and the branch's.


def _chunk(shape) -> int:
    """Windows attended at a time in a fused sublayer's block of `shape` [windows, V, 3C]: as many as the
    score budget allows, so that the block (32 windows) need not hold all its scores at once."""
    wb, vol, c3 = shape
    return block_windows(wb, 1, vol, c3)


def resident(shape) -> pl.BlockSpec:
    """The whole array in every grid step (weights; gradients summed over the grid)."""
    return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def token_blocks(width: int, block: int, c_major: bool) -> pl.BlockSpec:
    """Grid step i's block of `block` tokens of a token-major array `width` wide, held C-major or not."""
    if c_major:
        return pl.BlockSpec((width, block), lambda i: (0, i))
    return pl.BlockSpec((block, width), lambda i: (i, 0))


def _sublayer_specs(c, c3, heads, vol, wb, period, masked, c_major):
    """Inputs of both sublayer kernels: grid step i's block of wb * V tokens ([C, tokens] C-major or
    [tokens, C]), the LayerNorm's scale and shift ([C, 1] or [1, C]), the qkv projection [C, 3C] and its
    bias, the output projection [C, C] and its bias, the relative bias, the block's masks."""
    vector = (c, 1) if c_major else (1, c)
    specs = [token_blocks(c, wb * vol, c_major), resident(vector), resident(vector)]
    specs += [resident((c, c3)), resident((1, c3)), resident((c, c)), resident((1, c)), resident((heads, vol, vol))]
    if masked:
        specs.append(pl.BlockSpec((wb, vol, vol), lambda i: (i % period, 0, 0)))
    return specs


def _sublayer_call(
    x, keep, norm_scale, norm_shift, w, qkv_bias, proj, proj_bias, bias, mask, heads, eps, interpret, residuals=None
):
    """The forward kernel on token rows `x` [n * V, C] (-> x + keep * the sublayer's output, [n * V, C], and
    the attention outputs [n * V, C] the backward kernel needs), or with `residuals` = (those attention
    outputs, d out) the backward one (-> the gradients of x and the weights). Rows narrower than whole
    lanes go to the kernels C-major ([C, tokens] blocks, as XLA holds them), others row-major."""
    tokens, c = x.shape
    c3, vol, itemsize, acc = w.shape[-1], bias.shape[-1], x.dtype.itemsize, accumulator(x.dtype)
    masked, dropped, c_major = mask is not None, keep is not None, c % LANES != 0
    orient = (lambda a: a.T) if c_major else (lambda a: a)  # noqa: E731  Of a token-major array.
    n, nw = tokens // vol, mask.shape[0] if masked else 1
    wb = block_rows_windows(n, nw, vol, LANES if c_major else tile_rows(itemsize))
    if masked and wb > nw:  # A block spans several runs of the masks: give it its own run of wb.
        mask = jnp.tile(mask, (wb // nw, 1, 1))
    period = max(1, (mask.shape[0] if masked else 1) // wb)
    vector = lambda v: orient(v.reshape(1, c)).astype(acc)  # noqa: E731  A [C] vector, over the tokens.
    args = (orient(x), vector(norm_scale), vector(norm_shift), w)
    args += (qkv_bias.reshape(1, c3), proj, proj_bias.reshape(1, c), bias) + ((mask,) if masked else ())
    tokens_spec = token_blocks(c, wb * vol, c_major)  # Of the tokens, the result and their gradients.
    rows_spec = pl.BlockSpec((wb * vol, c), lambda i: (i, 0))  # Of the attention outputs [N, C].
    specs = _sublayer_specs(c, c3, heads, vol, wb, period, masked, c_major)
    if dropped:
        args += (orient(keep.reshape(tokens, 1).astype(acc)),)
        specs.append(token_blocks(1, wb * vol, c_major))
    kernel_args = dict(heads=heads, scale=(c // heads) ** -0.5, masked=masked, dropped=dropped, eps=eps)
    kernel_args.update(chunk=_chunk((wb, vol, c3)), c_major=c_major)
    scratch = [pltpu.VMEM((wb, vol, c3), x.dtype)]  # qkv (and in the backward pass its gradient, as rows).
    weights_bytes = (w.size + proj.size) * itemsize + bias.size * bias.dtype.itemsize
    if residuals is None:
        kernel = functools.partial(_sublayer_forward_kernel, **kernel_args)
        out_specs, semantics, sums = [tokens_spec, rows_spec], "parallel", ()
        out_shape = [jax.ShapeDtypeStruct(args[0].shape, x.dtype), jax.ShapeDtypeStruct((tokens, c), x.dtype)]
        cost = _cost(n, vol, c3, heads, 2, 3 * tokens * c * itemsize + weights_bytes, masked, projections=(1, 1))
    else:
        attended, dout = residuals
        args += (attended, orient(dout))
        specs += [rows_spec, tokens_spec]
        kernel = functools.partial(_sublayer_backward_kernel, **kernel_args)
        # The gradients of the first eight inputs, in their blocks: the tokens' and the two weight matrices'
        # in their dtypes, the vectors' and the relative bias's in float32 (float64 for float64 tokens);
        # all summed in float32. (Rounding the small ones in the kernel too took stage 2's backward kernel
        # 0.2 MB over its VMEM in the full step: bfloat16 blocks pad to 16 rows.)
        out_specs = _sublayer_specs(c, c3, heads, vol, wb, period, False, c_major)
        dtypes = (x.dtype, acc, acc, w.dtype, jnp.float32, proj.dtype, acc, jnp.float32)
        out_shape = [jax.ShapeDtypeStruct(a.shape, d) for a, d in zip(args[:8], dtypes, strict=True)]
        semantics = "arbitrary"  # The weight and bias gradients are summed over the grid.
        sums = range(1, 8)  # Rounded in the kernel where narrower (w, proj).
        scratch += [pltpu.VMEM((wb * vol, c), x.dtype), pltpu.VMEM((wb * vol, c3), x.dtype)]
        io = 4 * tokens * c * itemsize + weights_bytes + (w.size + proj.size) * itemsize + bias.size * 4
        cost = _cost(n, vol, c3, heads, 5, io, masked, projections=(3, 2))
    out = run_kernel(kernel, args, n // wb, specs, out_specs, out_shape, semantics, cost, interpret, scratch, sums)
    return (orient(out[0]),) + tuple(out[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(10, 11, 12))
def _sublayer(x, keep, norm_scale, norm_shift, w, qkv_bias, proj, proj_bias, bias, mask, heads, eps, interpret):
    inputs = (x, keep, norm_scale, norm_shift, w, qkv_bias, proj, proj_bias, bias, mask)
    return _sublayer_call(*inputs, heads, eps, interpret)[0]


def _sublayer_fwd(x, keep, norm_scale, norm_shift, w, qkv_bias, proj, proj_bias, bias, mask, heads, eps, interpret):
    inputs = (x, keep, norm_scale, norm_shift, w, qkv_bias, proj, proj_bias, bias, mask)
    out, attended = _sublayer_call(*inputs, heads, eps, interpret)
    return out, (inputs, attended)


def _sublayer_bwd(heads, eps, interpret, residuals, dout):
    inputs, attended = residuals
    x, keep, norm_scale, norm_shift, w, qkv_bias, proj, proj_bias, bias, mask = inputs
    grads = _sublayer_call(*inputs, heads, eps, interpret, (attended, dout))
    dx, dscale, dshift, dw, dqkv_bias, dproj, dproj_bias, dbias = grads
    like = lambda g, x: g.reshape(x.shape).astype(x.dtype)  # noqa: E731
    zeros = lambda x: None if x is None else jnp.zeros_like(x)  # noqa: E731  Random draws and masks.
    return (
        dx, zeros(keep), like(dscale, norm_scale), like(dshift, norm_shift), like(dw, w), like(dqkv_bias, qkv_bias),
        like(dproj, proj), like(dproj_bias, proj_bias), like(dbias, bias), zeros(mask),
    )  # fmt: skip


_sublayer.defvjp(_sublayer_fwd, _sublayer_bwd)


def sublayer(
    rows: jax.Array,
    norm_scale,
    norm_shift,
    eps: float,
    kernel,
    qkv_bias,
    proj,
    proj_bias,
    bias,
    mask,
    heads: int,
    keep=None,
    interpret: bool | None = None,
) -> jax.Array:
    """rows + keep * the attention sublayer of token rows [N, C] as one Pallas kernel per device (each on its
    share of the rows under a mesh that shards the batch): LayerNorm (weights `norm_scale`, `norm_shift`,
    epsilon `eps`), the qkv projection (`kernel` [C, 3C], `qkv_bias`), window attention (relative `bias`,
    shift `mask`), the output projection (`proj` [C, C], `proj_bias`); `keep`: each row's stochastic-depth
    scale [N] (0 or 1 / keep probability) or None. Rows narrower than whole lanes go to the kernel C-major
    and come back so."""
    mask = None if mask is None else jnp.asarray(mask, jnp.float32)

    def fn(rows, keep, *weights):
        return _sublayer(rows, keep, *weights, heads, eps, interpret)

    return per_device(fn, rows, keep, norm_scale, norm_shift, kernel, qkv_bias, proj, proj_bias, bias, mask, split=2)


def cudnn(qkv: jax.Array, bias: jax.Array, mask, heads: int, implementation: str | None = "cudnn") -> jax.Array:
    """cuDNN's fused attention, each device on its own share of the windows under a mesh, as the Pallas
    kernel: the per-window layouts `dot_product` builds are then local, and the bias gradient of each
    share is summed by shard_map's transpose rather than left to the custom call's partitioning rules.
    (`implementation=None` runs the same code through XLA, which is how CPU tests check the sharding.)"""
    return per_device(lambda q, b, m: dot_product(q, b, m, heads, implementation), qkv, bias, mask)


def per_device(fn, qkv: jax.Array, *replicated_args, split: int = 1):
    """`fn(qkv, *replicated_args)`, or under a mesh that shards the batch, `jax.shard_map` of it with `qkv`
    (and the result) split over the mesh axes the logical "batch" axis maps to (windows are batch-major)
    and the other arguments whole on each device, but for the first `split` - 1 of them, split as `qkv`
    (None stays None). For calls XLA cannot partition (a Pallas kernel) or should not (per-window layouts)."""
    mesh = jax.sharding.get_abstract_mesh()
    batch_axes = () if mesh.empty else _batch_axes(mesh)
    if not batch_axes:
        return fn(qkv, *replicated_args)
    spec, whole = jax.sharding.PartitionSpec(batch_axes), jax.sharding.PartitionSpec()
    in_specs = (spec,) + tuple(spec if i < split - 1 else whole for i in range(len(replicated_args)))
    # check_vma=False: a pallas_call or custom call does not say how its outputs vary over the mesh axes.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(qkv, *replicated_args)


def per_device_count(n: int) -> int:
    """How many of `n` batch-major rows (or windows) each device holds inside `per_device` under the current
    mesh: `n` split over the mesh axes the "batch" axis maps to (all `n` without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return n // (1 if mesh.empty else math.prod(mesh.shape[a] for a in _batch_axes(mesh)))


def _batch_axes(mesh) -> tuple[str, ...]:
    """The mesh axes (of size > 1) the logical "batch" axis maps to: by the active flax rules, else by the
    trainer's default table."""
    spec = nn.logical_to_mesh_axes(("batch",), None if nn.get_logical_axis_rules() else DEFAULT_RULES)
    axes = spec[0] if spec and spec[0] is not None else ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)


def attention(
    qkv: jax.Array, bias: jax.Array, mask, heads: int, impl: str = "xla", dropout=None, qkv_bias=None
) -> jax.Array:
    """`qkv` as [windows, V, 3C], or as [windows * V, 3C] token rows (the result then [windows * V, C]),
    which the Pallas kernel reads without a copy and the other paths split into windows."""
    if impl == "pallas":
        return pallas(qkv, bias, mask, heads, qkv_bias)
    if qkv.ndim == 2:
        out = attention(qkv.reshape(-1, bias.shape[-1], qkv.shape[-1]), bias, mask, heads, impl, dropout, qkv_bias)
        return out.reshape(qkv.shape[0], -1)
    if qkv_bias is not None:
        qkv = qkv + qkv_bias.astype(qkv.dtype)
    if impl == "xla":
        return reference(qkv, bias, mask, heads, dropout)
    if impl == "dot_product":
        return dot_product(qkv, bias, mask, heads)
    if impl == "cudnn":
        return cudnn(qkv, bias, mask, heads)
    raise ValueError(f"window attention implementation {impl!r} is not one of {IMPLEMENTATIONS}")

"""LayerNorm of token rows followed by a bias-free Linear, as one Pallas TPU kernel: Swin's patch merging.

Each patch merging normalises the concatenated neighbours (4C wide) and reduces them to 2C. XLA ran that
LayerNorm over a 5-D map, whose per-token statistics lie along its narrow W axis, padded to 128 lanes, and
priced every pass over it (statistics, normalisation, and three more in the backward pass) by the elements
it touches: 1.1 million cycles for the first merging on a v5e at 2 clips per chip, forward and backward
(`python -m avcanet_jax.aot --profile`). On rows [tokens, 4C] the kernel reads the rows once and writes
the result once; its backward pass recomputes the normalised rows from the rows instead of reading them
back, and sums the weights' gradients on chip.

As the other kernels (`fused_mlp`, `window_attention.sublayer`), it holds rows narrower than 128 lanes
C-major ([C, tokens] blocks, as XLA holds them), wider ones row-major, on each side independently: the
first patch merging reads 384-wide rows and writes 192-wide ones. Runs on CPU in Pallas's interpreter
(tests) and compiles for TPUs.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl

from avcanet_jax.fused_mlp import NORM_OPS, VECTOR_FLOPS, block_tokens
from avcanet_jax.window_attention import (
    LANES,
    MXU,
    accumulator,
    layer_norm_backward,
    normalized,
    per_device,
    resident,
    run_kernel,
    token_blocks,
    zero_on_first_step,
)


def _product(a, b, ca: int, cb: int):
    """a and b contracted over their axes `ca` and `cb`, accumulated in float32 (float64 for float64)."""
    return jax.lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), preferred_element_type=accumulator(a.dtype))


def _axes(c: int, d: int) -> tuple[int, int]:
    """The channel axis of an input block (rows C wide) and of an output block (rows D wide): 0 for C-major
    blocks [C, tokens], 1 for row-major ones [tokens, C]."""
    return (0 if c % LANES else 1), (0 if d % LANES else 1)


def _block(tokens: int, c: int, d: int, itemsize: int = 2) -> int:
    """Tokens per grid step (`fused_mlp.block_tokens`), in whole lanes where either side is C-major; 0 when
    no block fits VMEM."""
    cx, cy = _axes(c, d)
    return block_tokens(tokens, max(c, d), not (cx and cy), itemsize)


def _transposed(cx: int, cy: int) -> bool:
    """Whether the backward kernel takes the weights (and gives their gradient) as [D, C] rather than [C, D]:
    for row-major rows in and C-major rows out, where [C, D] would need both operands of a product
    transposed, which the matrix unit does not take as they are."""
    return bool(cx and not cy)


def _forward_kernel(x_ref, scale_ref, shift_ref, w_ref, out_ref, *, eps: float, cx: int, cy: int):
    """`w_ref`: the weights as [C, D] for a row-major output, as [D, C] for a C-major one."""
    xn = normalized(x_ref, scale_ref, shift_ref, eps, axis=cx)[0]
    y = _product(xn, w_ref[...], cx, 0) if cy else _product(w_ref[...], xn, 1, cx)
    out_ref[...] = y.astype(out_ref.dtype)  # Rounded to the rows' dtype, as XLA's product.


def _backward_kernel(*refs, eps: float, cx: int, cy: int):
    """`w_ref` and `dw_ref` as [D, C] or [C, D] (`_transposed`)."""
    x_ref, scale_ref, shift_ref, w_ref, dy_ref, dx_ref, dscale_ref, dshift_ref, dw_ref = refs
    zero_on_first_step(dscale_ref, dshift_ref, dw_ref)
    xn, xhat, rstd = normalized(x_ref, scale_ref, shift_ref, eps, axis=cx)
    dy, w, tokens = dy_ref[...], w_ref[...], 1 - cx
    if _transposed(cx, cy):  # dy [D, tokens], xn [tokens, C], w [D, C].
        dxn = _product(dy, w, 0, 0)
        dw_ref[...] += _product(dy, xn, 1, 0)
    else:
        dxn = _product(dy, w, cy, 1) if cx else _product(w, dy, 1, cy)
        dw_ref[...] += _product(xn, dy, tokens, 1 - cy)
    dscale_ref[...] += (dxn * xhat).sum(axis=tokens, keepdims=True)
    dshift_ref[...] += dxn.sum(axis=tokens, keepdims=True)
    dx_ref[...] = layer_norm_backward(dxn, xhat, rstd, scale_ref, axis=cx).astype(dx_ref.dtype)


def _cost(tokens: int, c: int, d: int, products: int, io_bytes: int) -> pl.CostEstimate:
    """`products` [tokens, C] x [C, D] products (dimensions padded to the matrix unit) or the LayerNorm's
    vector work, whichever takes longer, in MXU flops (`fused_mlp.VECTOR_FLOPS`), and the HBM bytes."""
    padded = lambda x: -(-x // MXU) * MXU  # noqa: E731
    matrix = products * 2 * tokens * padded(c) * padded(d)
    vector = VECTOR_FLOPS * tokens * NORM_OPS * c
    return pl.CostEstimate(flops=max(matrix, vector), transcendentals=tokens, bytes_accessed=io_bytes)


def _call(x, scale, shift, w, eps, interpret, dy=None):
    """The forward kernel on rows `x` [tokens, C] (-> LayerNorm(x) @ w, [tokens, D]), or with `dy` the
    backward one (-> the gradients of x, scale, shift and w)."""
    (tokens, c), d, acc = x.shape, w.shape[1], accumulator(x.dtype)
    cx, cy = _axes(c, d)
    block = _block(tokens, c, d, x.dtype.itemsize)
    orient = lambda a, axis: a if axis else a.T  # noqa: E731  A token-major array, channel axis `axis`.
    vector = lambda v: orient(v.reshape(1, -1), cx).astype(acc)  # noqa: E731  Broadcast over the tokens.
    args = (orient(x, cx), vector(scale), vector(shift))
    specs = [token_blocks(c, block, not cx), resident(args[1].shape), resident(args[2].shape)]
    io = (tokens * c + tokens * d) * x.dtype.itemsize + w.size * w.dtype.itemsize
    if dy is None:
        args += (w if cy else w.T,)
        specs.append(resident(args[-1].shape))
        out_shape = jax.ShapeDtypeStruct((tokens, d) if cy else (d, tokens), x.dtype)
        kernel, cost = functools.partial(_forward_kernel, eps=eps, cx=cx, cy=cy), _cost(tokens, c, d, 1, io)
        out_specs = token_blocks(d, block, not cy)
        out = run_kernel(kernel, args, tokens // block, specs, out_specs, out_shape, "parallel", cost, interpret)
        return orient(out, cy)
    transposed = _transposed(cx, cy)
    args += (w.T if transposed else w, orient(dy, cy))
    specs += [resident(args[3].shape), token_blocks(d, block, not cy)]
    shapes = [(args[0].shape, x.dtype), (args[1].shape, acc), (args[2].shape, acc), (args[3].shape, w.dtype)]
    out_shape = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    out_specs = specs[:3] + [resident(args[3].shape)]
    io += tokens * c * x.dtype.itemsize + w.size * w.dtype.itemsize  # dx, and the weights' gradient.
    kernel, cost = functools.partial(_backward_kernel, eps=eps, cx=cx, cy=cy), _cost(tokens, c, d, 2, io)
    # "arbitrary": the grid steps sum the LayerNorm's and the weights' gradients (outputs 1 to 3).
    dx, dscale, dshift, dw = run_kernel(
        kernel, args, tokens // block, specs, out_specs, out_shape, "arbitrary", cost, interpret, sums=range(1, 4)
    )
    return orient(dx, cx), dscale.reshape(c), dshift.reshape(c), (dw.T if transposed else dw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(x, scale, shift, w, eps, interpret):
    return _call(x, scale, shift, w, eps, interpret)


def _fused_fwd(x, scale, shift, w, eps, interpret):
    return _call(x, scale, shift, w, eps, interpret), (x, scale, shift, w)


def _fused_bwd(eps, interpret, residuals, dy):
    dx, dscale, dshift, dw = _call(*residuals, eps, interpret, dy)
    _, scale, shift, w = residuals
    return dx, dscale.astype(scale.dtype), dshift.astype(shift.dtype), dw.astype(w.dtype)


_fused.defvjp(_fused_fwd, _fused_bwd)


def pays(c: int, d: int, tokens: int) -> bool:
    """Whether the kernel serves `tokens` rows C wide (D wide out): whether a grid step's block fits VMEM."""
    return _block(tokens, c, d) > 0


def norm_linear(rows: jax.Array, scale, shift, eps: float, w, interpret: bool | None = None) -> jax.Array:
    """LayerNorm(rows) @ w of token rows [N, C] (LayerNorm weights `scale`, `shift`, epsilon `eps`, computed
    in float32 as flax's; `w` [C, D] in the rows' dtype) as one Pallas kernel per device, each on its share
    of the rows under a mesh that shards the batch."""
    return per_device(lambda r, *weights: _fused(r, *weights, eps, interpret), rows, scale, shift, w)

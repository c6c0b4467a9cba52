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

`layer_norm` is the same kernel without the product: the patch embedding's LayerNorm on stage 1's token
rows, which XLA ran as several passes over the [tokens, 96] rows in both directions.
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


def _rows(x_ref, bias_ref):
    """A block's rows, plus the bias added before the LayerNorm where there is one (rounded to the rows'
    dtype, as XLA rounds a convolution's output plus its bias)."""
    x = x_ref[...]
    return x if bias_ref is None else x + bias_ref[...].astype(x.dtype)


def _forward_kernel(x_ref, scale_ref, shift_ref, *refs, eps: float, cx: int, cy: int, product: bool):
    """`refs`: the weights (`product`: [C, D] for a row-major output, [D, C] for a C-major one) or the bias
    added before the LayerNorm, or neither; then the output."""
    *extra, out_ref = refs
    w_ref, bias_ref = (extra[0], None) if product else (None, extra[0] if extra else None)
    y = normalized(_rows(x_ref, bias_ref), scale_ref, shift_ref, eps, axis=cx)[0]
    if w_ref is not None:
        y = _product(y, w_ref[...], cx, 0) if cy else _product(w_ref[...], y, 1, cx)
    out_ref[...] = y.astype(out_ref.dtype)  # Rounded to the rows' dtype, as XLA's product.


def _backward_kernel(x_ref, scale_ref, shift_ref, *refs, eps: float, cx: int, cy: int, product: bool):
    """`refs`: the forward kernel's weights ([D, C] or [C, D], `_transposed`) or bias, if any, and the output
    gradient; then the gradients of the rows, scale, shift and the weights or bias."""
    n = (len(refs) - 4) // 2  # 0 or 1 weights or bias.
    (dy_ref, dx_ref, dscale_ref, dshift_ref), extra, dextra = refs[n : n + 4], refs[:n], refs[n + 4 :]
    w_ref, dw_ref = (extra[0], dextra[0]) if product else (None, None)
    bias_ref, dbias_ref = (None, None) if product or not n else (extra[0], dextra[0])
    zero_on_first_step(dscale_ref, dshift_ref, *dextra)
    xn, xhat, rstd = normalized(_rows(x_ref, bias_ref), scale_ref, shift_ref, eps, axis=cx)
    dy, tokens = dy_ref[...], 1 - cx
    if w_ref is None:
        dxn = dy.astype(xhat.dtype)
    elif _transposed(cx, cy):  # dy [D, tokens], xn [tokens, C], w [D, C].
        dxn = _product(dy, w_ref[...], 0, 0)
        dw_ref[...] += _product(dy, xn, 1, 0)
    else:
        w = w_ref[...]
        dxn = _product(dy, w, cy, 1) if cx else _product(w, dy, 1, cy)
        dw_ref[...] += _product(xn, dy, tokens, 1 - cy)
    dscale_ref[...] += (dxn * xhat).sum(axis=tokens, keepdims=True)
    dshift_ref[...] += dxn.sum(axis=tokens, keepdims=True)
    dx = layer_norm_backward(dxn, xhat, rstd, scale_ref, axis=cx)
    if dbias_ref is not None:
        dbias_ref[...] += dx.sum(axis=tokens, keepdims=True)
    dx_ref[...] = dx.astype(dx_ref.dtype)


def _cost(tokens: int, c: int, d: int, products: int, io_bytes: int) -> pl.CostEstimate:
    """`products` [tokens, C] x [C, D] products (dimensions padded to the matrix unit) or the LayerNorm's
    vector work, whichever takes longer, in MXU flops (`fused_mlp.VECTOR_FLOPS`), and the HBM bytes."""
    padded = lambda x: -(-x // MXU) * MXU  # noqa: E731
    matrix = products * 2 * tokens * padded(c) * padded(d)
    vector = VECTOR_FLOPS * tokens * NORM_OPS * c
    return pl.CostEstimate(flops=max(matrix, vector), transcendentals=tokens, bytes_accessed=io_bytes)


def _call(x, scale, shift, w, bias, eps, interpret, dy=None):
    """The forward kernel on rows `x` [tokens, C] (-> LayerNorm(x) @ w, [tokens, D]; for `w` None,
    LayerNorm(x + bias), `bias` [C] or None), or with `dy` the backward one (-> the gradients of x, scale,
    shift, w and bias)."""
    (tokens, c), acc = x.shape, accumulator(x.dtype)
    d = c if w is None else w.shape[1]
    cx, cy = _axes(c, d)
    block = _block(tokens, c, d, x.dtype.itemsize)
    orient = lambda a, axis: a if axis else a.T  # noqa: E731  A token-major array, channel axis `axis`.
    vector = lambda v: orient(v.reshape(1, -1), cx).astype(acc)  # noqa: E731  Broadcast over the tokens.
    args = (orient(x, cx), vector(scale), vector(shift))
    transposed = _transposed(cx, cy)
    if w is not None:  # [D, C] for a C-major output going forward, where `_transposed` going backward.
        as_dc = not cy if dy is None else transposed
        args += (w.T if as_dc else w,)
    elif bias is not None:
        args += (vector(bias),)
    specs = [token_blocks(c, block, not cx)] + [resident(a.shape) for a in args[1:]]
    products, w_bytes = (0, 0) if w is None else (1, w.size * w.dtype.itemsize)
    io = (tokens * c + tokens * d) * x.dtype.itemsize + w_bytes
    kernel_args = dict(eps=eps, cx=cx, cy=cy, product=bool(products))
    if dy is None:
        out_shape = jax.ShapeDtypeStruct((tokens, d) if cy else (d, tokens), x.dtype)
        kernel, cost = functools.partial(_forward_kernel, **kernel_args), _cost(tokens, c, d, products, io)
        out_specs = token_blocks(d, block, not cy)
        out = run_kernel(kernel, args, tokens // block, specs, out_specs, out_shape, "parallel", cost, interpret)
        return orient(out, cy)
    # The gradients of the inputs, in their blocks: the rows' and weights' in their dtypes, the vectors' in
    # float32 (float64 for float64 rows).
    dtypes = [x.dtype, acc, acc] + [w.dtype if products else acc] * (len(args) - 3)
    out_shape = [jax.ShapeDtypeStruct(a.shape, dtype) for a, dtype in zip(args, dtypes, strict=True)]
    out_specs = list(specs)
    args += (orient(dy, cy),)
    specs.append(token_blocks(d, block, not cy))
    io += tokens * c * x.dtype.itemsize + w_bytes  # dx, and the weights' gradient.
    kernel, cost = functools.partial(_backward_kernel, **kernel_args), _cost(tokens, c, d, 2 * products, io)
    # "arbitrary": the grid steps sum the gradients of the LayerNorm and the weights or bias (outputs 1-3).
    dx, dscale, dshift, *dextra = run_kernel(
        kernel, args, tokens // block, specs, out_specs, out_shape, "arbitrary", cost, interpret,
        sums=range(1, len(out_shape)),
    )  # fmt: skip
    (extra,), dw, dbias = dextra or (None,), None, None
    if products:
        dw = extra.T if transposed else extra
    elif bias is not None:
        dbias = extra.reshape(c)
    return orient(dx, cx), dscale.reshape(c), dshift.reshape(c), dw, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused(x, scale, shift, w, bias, eps, interpret):
    return _call(x, scale, shift, w, bias, eps, interpret)


def _fused_fwd(x, scale, shift, w, bias, eps, interpret):
    return _call(x, scale, shift, w, bias, eps, interpret), (x, scale, shift, w, bias)


def _fused_bwd(eps, interpret, residuals, dy):
    grads = _call(*residuals, eps, interpret, dy)
    return tuple(None if g is None else g.astype(r.dtype) for g, r in zip(grads, residuals, strict=True))


_fused.defvjp(_fused_fwd, _fused_bwd)


def pays(c: int, d: int, tokens: int) -> bool:
    """Whether the kernel serves `tokens` rows C wide (D wide out): whether a grid step's block fits VMEM."""
    return _block(tokens, c, d) > 0


def norm_linear(rows: jax.Array, scale, shift, eps: float, w, interpret: bool | None = None) -> jax.Array:
    """LayerNorm(rows) @ w of token rows [N, C] (LayerNorm weights `scale`, `shift`, epsilon `eps`, computed
    in float32 as flax's; `w` [C, D] in the rows' dtype) as one Pallas kernel per device, each on its share
    of the rows under a mesh that shards the batch."""
    return per_device(lambda r, s, b, w: _fused(r, s, b, w, None, eps, interpret), rows, scale, shift, w)


def layer_norm(rows: jax.Array, scale, shift, eps: float, bias=None, interpret: bool | None = None) -> jax.Array:
    """LayerNorm(rows + bias) of token rows [N, C] (`bias` [C] or None), as `norm_linear` without the
    product: the patch embedding's LayerNorm with its convolution's bias, whose gradient (a sum over every
    token) the backward kernel then sums from values on chip instead of XLA in a pass of its own."""
    return per_device(lambda r, *v: _fused(r, *v[:2], None, v[2], eps, interpret), rows, scale, shift, bias)

"""The Swin MLP sublayer in one Pallas TPU kernel: fc2(GELU(fc1(LayerNorm(x)))) of token rows, C-major.

Stage 1 of Swin-T has 96-wide token rows and a 384-wide hidden layer. XLA runs the sublayer as separate
passes over HBM: fc1 and GELU write the hidden pre-activation and activation ([tokens, 4C], 77 MB each at
2 clips per chip), fc2 reads them back, and the backward pass reads both again and writes and reads the
hidden gradient, so one stage-1 MLP moves about 0.7 GB. This kernel keeps the hidden layer in VMEM: it
reads the rows and writes the MLP's output, and its backward pass recomputes the LayerNorm, fc1 and GELU
from the rows (the matrix unit is mostly idle at these widths) instead of reading them back.

Like `window_attention.sublayer`, it reads the rows transposed, as [C, tokens] blocks, which is how XLA
holds rows narrower than 128 lanes (a bitcast, no copy), and returns its output and the rows' gradient
the same way; every product is then [out, in] x [in, tokens] with the tokens on the lanes.

GELU is exact, 0.5 h (1 + erf(h / sqrt 2)) as torch's, computed in float32 like XLA's erf-based one; its
derivative in the backward pass reuses the same erf (Phi(h) + h phi(h)). Dropout inside the MLP is not
supported (the Swin blocks fall back to XLA when it is on). Runs on CPU in Pallas's interpreter (tests)
and compiles for TPUs.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from avcanet_jax.window_attention import (
    LANES,
    MXU,
    VMEM_LIMIT,
    accumulator,
    normalized_columns,
    on_platform,
    per_device,
    resident,
    zero_on_first_step,
)

# Per grid step the backward kernel holds about six float32 [hidden, tokens] arrays; this bounds one.
HIDDEN_BYTES = 3 * 2**20
# The vector unit's share of the work, in the cost estimate's currency (MXU flops): a v5e's matrix units do
# 197 TFLOP/s, its vector unit 4,096 float32 operations a cycle at 1.5 GHz (XLA's own model of it: a chain
# of 64 more multiply-adds per element of a [100352, 384] array costs it 4,700 operations a cycle), so one
# vector operation per element takes the time of 32 MXU flops.
VECTOR_FLOPS = 32
# Float32 vector operations per hidden element: forward, the bias, erf (XLA's rational approximation: a
# clamp, two polynomials in h^2 and a division) and GELU; backward, the same again, the derivative and the
# bias gradient's sum. The LayerNorm's, per row element, both ways.
FORWARD_OPS, BACKWARD_OPS, NORM_OPS = 40, 50, 30


def block_tokens(tokens: int, hidden: int) -> int:
    """Tokens per grid step: the largest multiple of 128 lanes that divides `tokens` and keeps a float32
    [hidden, block] array within HIDDEN_BYTES (at least 128); all `tokens` when it is not a multiple of
    128 lanes (a block may always span a whole array); 0 when neither fits VMEM."""
    best = 0
    for block in range(LANES, tokens + 1, LANES):
        if tokens % block == 0 and (block * hidden * 4 <= HIDDEN_BYTES or not best):
            best = block
    if best:
        return best
    return tokens if tokens * hidden * 4 <= 4 * HIDDEN_BYTES else 0


def _gelu_parts(h):
    """(GELU(h), Phi(h)) in float32: Phi the standard normal CDF, 0.5 (1 + erf(h / sqrt 2)), as torch's GELU."""
    cdf = 0.5 * (1.0 + jax.lax.erf(h * (1 / math.sqrt(2))))
    return h * cdf, cdf


def _hidden(xn, w1t_ref, b1_ref):
    """fc1 of normalised [C, tokens]: [H, tokens] in the tokens' dtype, its bias added as `nnx.Linear` does."""
    h = jnp.dot(w1t_ref[...], xn, preferred_element_type=accumulator(xn.dtype)).astype(xn.dtype)
    return h + b1_ref[...].astype(xn.dtype)


def _forward_kernel(xt_ref, scale_ref, shift_ref, w1t_ref, b1_ref, w2t_ref, b2_ref, yt_ref, *, eps: float):
    xn = normalized_columns(xt_ref, scale_ref, shift_ref, eps)[0]
    h = _hidden(xn, w1t_ref, b1_ref)
    g = _gelu_parts(h.astype(accumulator(h.dtype)))[0].astype(h.dtype)
    y = jnp.dot(w2t_ref[...], g, preferred_element_type=accumulator(g.dtype)).astype(g.dtype)
    yt_ref[...] = (y + b2_ref[...].astype(g.dtype)).astype(yt_ref.dtype)


def _backward_kernel(*refs, eps: float):
    xt_ref, scale_ref, shift_ref, w1t_ref, b1_ref, w2t_ref, b2_ref, w1_ref, w2_ref, dyt_ref, *grads = refs
    dxt_ref, dscale_ref, dshift_ref, dw1t_ref, db1_ref, dw2t_ref, db2_ref = grads
    zero_on_first_step(dscale_ref, dshift_ref, dw1t_ref, db1_ref, dw2t_ref, db2_ref)
    xn, xhat, rstd = normalized_columns(xt_ref, scale_ref, shift_ref, eps)
    acc = accumulator(xn.dtype)
    h = _hidden(xn, w1t_ref, b1_ref)
    g, cdf = _gelu_parts(h.astype(acc))
    g = g.astype(h.dtype)
    dy = dyt_ref[...]  # [C, tokens]
    t = (((1,), (1,)), ((), ()))  # Contract the tokens: [a, tokens] x [b, tokens] -> [a, b].
    dw2t_ref[...] += jax.lax.dot_general(dy, g, t, preferred_element_type=acc)
    db2_ref[...] += dy.astype(acc).sum(axis=1, keepdims=True)
    dg = jnp.dot(w2_ref[...], dy, preferred_element_type=acc)  # [H, tokens]
    hf = h.astype(acc)
    slope = cdf + hf * jnp.exp(-0.5 * hf * hf) * (1 / math.sqrt(2 * math.pi))  # GELU'(h).
    dh = (dg.astype(h.dtype).astype(acc) * slope).astype(h.dtype)
    dw1t_ref[...] += jax.lax.dot_general(dh, xn, t, preferred_element_type=acc)
    db1_ref[...] += dh.astype(acc).sum(axis=1, keepdims=True)
    dxn = jnp.dot(w1_ref[...], dh, preferred_element_type=acc).astype(xn.dtype).astype(acc)  # [C, tokens]
    dscale_ref[...] += (dxn * xhat).sum(axis=1, keepdims=True)
    dshift_ref[...] += dxn.sum(axis=1, keepdims=True)
    gn = dxn * scale_ref[...]  # LayerNorm's backward, over C.
    dx = rstd * (gn - gn.mean(axis=0, keepdims=True) - xhat * (gn * xhat).mean(axis=0, keepdims=True))
    dxt_ref[...] = dx.astype(dxt_ref.dtype)


def _cost(c: int, hidden: int, tokens: int, products: int, vector_ops: int, io_bytes: int) -> pl.CostEstimate:
    """`products` [H, C] x [C, tokens]-sized products (C padded to the matrix unit) or the vector work of
    `vector_ops` per hidden element, whichever takes longer, in MXU flops (VECTOR_FLOPS), one erf and one
    exp per hidden element, and the HBM bytes read and written (`io_bytes`)."""
    padded = lambda x: -(-x // MXU) * MXU  # noqa: E731
    matrix = products * 2 * tokens * padded(c) * padded(hidden)
    vector = VECTOR_FLOPS * tokens * (vector_ops * hidden + NORM_OPS * c)
    return pl.CostEstimate(flops=max(matrix, vector), transcendentals=tokens * hidden * 2, bytes_accessed=io_bytes)


def _call(xt, norm_scale, norm_shift, w1, b1, w2, b2, eps, interpret, dyt=None):
    """The forward kernel on C-major tokens `xt` [C, tokens] (-> the output [C, tokens]), or with `dyt` the
    backward one (-> the gradients of `xt`, the LayerNorm weights, w1^T, b1, w2^T and b2)."""
    c, tokens = xt.shape
    hidden, itemsize, acc = w1.shape[1], xt.dtype.itemsize, accumulator(xt.dtype)
    block = block_tokens(tokens, hidden)
    args = (xt, norm_scale.reshape(c, 1).astype(acc), norm_shift.reshape(c, 1).astype(acc), w1.T)
    args += (b1.reshape(hidden, 1), w2.T, b2.reshape(c, 1))
    columns = pl.BlockSpec((c, block), lambda i: (0, i))
    specs = [columns] + [resident(a.shape) for a in args[1:]]
    weights_bytes = (w1.size + w2.size) * w1.dtype.itemsize
    if dyt is None:
        kernel, out_specs, semantics = functools.partial(_forward_kernel, eps=eps), columns, "parallel"
        out_shape = jax.ShapeDtypeStruct(xt.shape, xt.dtype)
        cost = _cost(c, hidden, tokens, 2, FORWARD_OPS, 2 * xt.size * itemsize + weights_bytes)
    else:
        args += (w1, w2, dyt)
        specs += [resident(w1.shape), resident(w2.shape), columns]
        kernel, semantics = functools.partial(_backward_kernel, eps=eps), "arbitrary"  # Gradients summed.
        out_specs = [columns] + specs[1:7]
        # The tokens' gradient in their dtype, the weights' and biases' summed in float32 (or float64).
        out_shape = [jax.ShapeDtypeStruct(xt.shape, xt.dtype)] + [jax.ShapeDtypeStruct(a.shape, acc) for a in args[1:7]]
        io = 3 * xt.size * itemsize + 2 * weights_bytes + (w1.size + w2.size) * acc.itemsize
        cost = _cost(c, hidden, tokens, 5, FORWARD_OPS + BACKWARD_OPS, io)
    call = lambda interpret: pl.pallas_call(  # noqa: E731
        kernel,
        grid=(tokens // block,),
        in_specs=specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=(semantics,), vmem_limit_bytes=VMEM_LIMIT),
        cost_estimate=cost,
        interpret=interpret,
    )(*args)  # fmt: skip
    return on_platform(call, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _fused(xt, norm_scale, norm_shift, w1, b1, w2, b2, eps, interpret):
    return _call(xt, norm_scale, norm_shift, w1, b1, w2, b2, eps, interpret)


def _fused_fwd(xt, norm_scale, norm_shift, w1, b1, w2, b2, eps, interpret):
    return _call(xt, norm_scale, norm_shift, w1, b1, w2, b2, eps, interpret), (
        xt,
        norm_scale,
        norm_shift,
        w1,
        b1,
        w2,
        b2,
    )


def _fused_bwd(eps, interpret, residuals, dyt):
    xt, norm_scale, norm_shift, w1, b1, w2, b2 = residuals
    dxt, dscale, dshift, dw1t, db1, dw2t, db2 = _call(*residuals, eps, interpret, dyt)
    like = lambda g, x: g.reshape(x.shape).astype(x.dtype)  # noqa: E731
    return (
        dxt, like(dscale, norm_scale), like(dshift, norm_shift), like(dw1t.T, w1), like(db1, b1),
        like(dw2t.T, w2), like(db2, b2),
    )  # fmt: skip


_fused.defvjp(_fused_fwd, _fused_bwd)


def pays(c: int, tokens: int, hidden: int) -> bool:
    """Whether the fused MLP serves rows C wide: where XLA keeps them C-major (C not a multiple of 128
    lanes: Swin-T's stages 1 and 2) and a grid step's hidden block fits VMEM."""
    return c % LANES != 0 and block_tokens(tokens, hidden) > 0


def mlp(rows: jax.Array, norm_scale, norm_shift, eps: float, w1, b1, w2, b2, interpret: bool | None = None):
    """fc2(GELU(fc1(LayerNorm(rows)))) of token rows [N, C] (LayerNorm weights `norm_scale`, `norm_shift`,
    epsilon `eps`; fc1 `w1` [C, H] and `b1`, fc2 `w2` [H, C] and `b2`) as one Pallas kernel per device
    (each on its share of the rows under a mesh that shards the batch): [N, C] out, without the residual."""

    def fn(rows, *weights):
        return _fused(rows.T, *weights, eps, interpret).T

    return per_device(fn, rows, norm_scale, norm_shift, w1, b1, w2, b2)

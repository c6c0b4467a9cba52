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

GELU is exact, 0.5 h (1 + erf(h / sqrt 2)) as torch's, computed in float32 like XLA's erf-based one (or in
its tanh form, `model.approximate_gelu`); its derivative in the backward pass reuses the same erf (Phi(h) +
h phi(h)). Dropout inside the MLP is not
supported (the Swin blocks fall back to XLA when it is on). Runs on CPU in Pallas's interpreter (tests)
and compiles for TPUs.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from avcanet_jax.window_attention import (
    LANES,
    MXU,
    accumulator,
    layer_norm_backward,
    normalized,
    per_device,
    resident,
    run_kernel,
    tile_rows,
    token_blocks,
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
# bias gradient's sum. The tanh form's tanh is one transcendental (a separate unit), so fewer. The
# LayerNorm's, per row element, both ways.
FORWARD_OPS, BACKWARD_OPS = {False: 40, True: 20}, {False: 50, True: 30}
NORM_OPS = 30


def block_tokens(tokens: int, hidden: int, c_major: bool = True, itemsize: int = 2) -> int:
    """Tokens per grid step: the largest block that divides `tokens`, spans whole tiles (C-major: a multiple
    of 128 lanes; row-major: of a tile's rows, 16 bf16 or 8 float32) and keeps a float32 [hidden, block]
    array within HIDDEN_BYTES (else the smallest); all `tokens` when no block spans whole tiles (a block may
    always span a whole array) and that fits 4x the budget; 0 when nothing does."""
    step = LANES if c_major else tile_rows(itemsize)
    best = 0
    for block in range(step, tokens + 1, step):
        if tokens % block == 0 and (block * hidden * 4 <= HIDDEN_BYTES or not best):
            best = block
    if best:
        return best
    return tokens if tokens * hidden * 4 <= 4 * HIDDEN_BYTES else 0


def _gelu(h, approximate: bool, derivative: bool = False):
    """GELU(h) in float32, exact (h Phi(h), Phi the standard normal CDF 0.5 (1 + erf(h / sqrt 2)), as torch's
    GELU) or in its tanh form (as `jax.nn.gelu(approximate=True)`); with `derivative`, (GELU(h), GELU'(h))."""
    if approximate:
        inner = math.sqrt(2 / math.pi) * (h + 0.044715 * h * h * h)
        t = jnp.tanh(inner)
        cdf = 0.5 * (1.0 + t)
        if not derivative:
            return h * cdf
        slope = cdf + 0.5 * h * (1.0 - t * t) * math.sqrt(2 / math.pi) * (1.0 + 3 * 0.044715 * h * h)
        return h * cdf, slope
    cdf = 0.5 * (1.0 + jax.lax.erf(h * (1 / math.sqrt(2))))
    if not derivative:
        return h * cdf
    return h * cdf, cdf + h * jnp.exp(-0.5 * h * h) * (1 / math.sqrt(2 * math.pi))


def _apply(w_ref, x, c_major: bool):
    """A product of a block: w @ x on C-major blocks (w [out, in], x [in, tokens]), x @ w on row-major ones
    (x [tokens, in], w [in, out]), accumulated in float32 and rounded to the block's dtype, as XLA's."""
    w = w_ref[...]
    y = (
        jnp.dot(w, x, preferred_element_type=accumulator(x.dtype))
        if c_major
        else jnp.dot(x, w, preferred_element_type=accumulator(x.dtype))
    )
    return y.astype(x.dtype)


def _weight_grad(dy, x, c_major: bool):
    """The gradient of the weights of `_apply(w, x)` whose output's gradient is `dy`: the tokens contracted."""
    if c_major:  # dy [out, tokens] x [in, tokens] -> [out, in].
        return jax.lax.dot_general(dy, x, (((1,), (1,)), ((), ())), preferred_element_type=accumulator(x.dtype))
    return jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ())), preferred_element_type=accumulator(x.dtype))


def _hidden(x_ref, scale_ref, shift_ref, w1_ref, b1_ref, eps: float, c_major: bool):
    """(normalised tokens, x_hat, 1 / std, fc1's output h) of a block."""
    xn, xhat, rstd = normalized(x_ref, scale_ref, shift_ref, eps, axis=0 if c_major else 1)
    h = _apply(w1_ref, xn, c_major) + b1_ref[...].astype(xn.dtype)  # The bias added as nnx.Linear adds it.
    return xn, xhat, rstd, h


def _forward_kernel(*refs, eps: float, c_major: bool, dropped: bool, approximate: bool):
    x_ref, scale_ref, shift_ref, w1_ref, b1_ref, w2_ref, b2_ref, *rest = refs
    keep_ref = rest.pop(0) if dropped else None
    (out_ref,) = rest
    h = _hidden(x_ref, scale_ref, shift_ref, w1_ref, b1_ref, eps, c_major)[3]
    g = _gelu(h.astype(accumulator(h.dtype)), approximate)
    y = _apply(w2_ref, g.astype(h.dtype), c_major)
    y = y + b2_ref[...].astype(y.dtype)
    if keep_ref is not None:  # Stochastic depth: each row's branch scaled by 0 or 1 / keep probability.
        y = (y.astype(accumulator(y.dtype)) * keep_ref[...]).astype(y.dtype)
    out_ref[...] = (x_ref[...] + y).astype(out_ref.dtype)


def _backward_kernel(*refs, eps: float, c_major: bool, dropped: bool, approximate: bool):
    """`w1_ref`, `w2_ref` as the forward pass applies them, `w1b_ref`, `w2b_ref` their transposes."""
    x_ref, scale_ref, shift_ref, w1_ref, b1_ref, w2_ref, b2_ref, *rest = refs
    keep_ref = rest.pop(0) if dropped else None
    w1b_ref, w2b_ref, dout_ref, dx_ref, dscale_ref, dshift_ref, dw1_ref, db1_ref, dw2_ref, db2_ref = rest
    zero_on_first_step(dscale_ref, dshift_ref, dw1_ref, db1_ref, dw2_ref, db2_ref)
    xn, xhat, rstd, h = _hidden(x_ref, scale_ref, shift_ref, w1_ref, b1_ref, eps, c_major)
    acc, tokens = accumulator(xn.dtype), 1 if c_major else 0
    g, slope = _gelu(h.astype(acc), approximate, derivative=True)
    dout = dout_ref[...]
    dy = dout if keep_ref is None else (dout.astype(acc) * keep_ref[...]).astype(dout.dtype)
    dw2_ref[...] += _weight_grad(dy, g.astype(h.dtype), c_major)
    db2_ref[...] += dy.astype(acc).sum(axis=tokens, keepdims=True)
    dh = (_apply(w2b_ref, dy, c_major).astype(acc) * slope).astype(h.dtype)
    dw1_ref[...] += _weight_grad(dh, xn, c_major)
    db1_ref[...] += dh.astype(acc).sum(axis=tokens, keepdims=True)
    dxn = _apply(w1b_ref, dh, c_major).astype(acc)
    dscale_ref[...] += (dxn * xhat).sum(axis=tokens, keepdims=True)
    dshift_ref[...] += dxn.sum(axis=tokens, keepdims=True)
    dx = layer_norm_backward(dxn, xhat, rstd, scale_ref, axis=1 - tokens).astype(dout.dtype)
    dx_ref[...] = (dout + dx).astype(dx_ref.dtype)  # The residual's gradient and the branch's.


def _cost(c: int, hidden: int, tokens: int, products: int, vector_ops: int, io_bytes: int) -> pl.CostEstimate:
    """`products` [tokens, C] x [C, H]-sized products (C and H padded to the matrix unit) or the vector work
    of `vector_ops` per hidden element, whichever takes longer, in MXU flops (VECTOR_FLOPS), one erf and
    one exp per hidden element, and the HBM bytes read and written (`io_bytes`)."""
    padded = lambda x: -(-x // MXU) * MXU  # noqa: E731
    matrix = products * 2 * tokens * padded(c) * padded(hidden)
    vector = VECTOR_FLOPS * tokens * (vector_ops * hidden + NORM_OPS * c)
    return pl.CostEstimate(flops=max(matrix, vector), transcendentals=tokens * hidden * 2, bytes_accessed=io_bytes)


def _call(x, keep, norm_scale, norm_shift, w1, b1, w2, b2, eps, approximate, interpret, dout=None):
    """The forward kernel on token rows `x` [tokens, C] (-> x + keep * MLP(LayerNorm(x)), [tokens, C]), or
    with `dout` the backward one (-> the gradients of `x`, the LayerNorm weights, w1, b1, w2 and b2). Rows
    narrower than whole lanes go to the kernel C-major ([C, tokens] blocks, as XLA holds them), others
    row-major. `keep`: each row's stochastic-depth scale [tokens] (float32), or None."""
    tokens, c = x.shape
    hidden, acc, c_major, dropped = w1.shape[1], accumulator(x.dtype), c % LANES != 0, keep is not None
    block = block_tokens(tokens, hidden, c_major, x.dtype.itemsize)
    orient = (lambda a: a.T) if c_major else (lambda a: a)  # noqa: E731  Of a token-major array or a weight.
    vector = lambda v: orient(v.reshape(1, -1))  # noqa: E731  A [C] or [H] vector, broadcast over the tokens.
    args = (orient(x), vector(norm_scale).astype(acc), vector(norm_shift).astype(acc), orient(w1), vector(b1))
    args += (orient(w2), vector(b2))

    rows = token_blocks(c, block, c_major)
    specs = [rows] + [resident(a.shape) for a in args[1:]]
    if dropped:
        args += (orient(keep.reshape(tokens, 1).astype(acc)),)
        specs.append(token_blocks(1, block, c_major))
    kernel_args = dict(eps=eps, c_major=c_major, dropped=dropped, approximate=approximate)
    weights_bytes = (w1.size + w2.size) * w1.dtype.itemsize
    io = 2 * x.size * x.dtype.itemsize + weights_bytes + (tokens * acc.itemsize if dropped else 0)
    if dout is None:
        kernel, out_specs, semantics, sums = functools.partial(_forward_kernel, **kernel_args), rows, "parallel", ()
        out_shape = jax.ShapeDtypeStruct(args[0].shape, x.dtype)
        cost = _cost(c, hidden, tokens, 2, FORWARD_OPS[approximate], io)
    else:
        args += (orient(w1).T, orient(w2).T, orient(dout))
        specs += [resident(args[-3].shape), resident(args[-2].shape), rows]
        kernel, semantics = functools.partial(_backward_kernel, **kernel_args), "arbitrary"  # Gradients summed.
        out_specs, sums = [rows] + specs[1:7], range(1, 7)
        # The gradients in their inputs' dtypes; the weights' and biases' summed in float32 (or float64).
        out_shape = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args[:7]]
        io += x.size * x.dtype.itemsize + 2 * weights_bytes  # And the weights' gradients, in their dtype.
        cost = _cost(c, hidden, tokens, 5, FORWARD_OPS[approximate] + BACKWARD_OPS[approximate], io)
    out = run_kernel(kernel, args, tokens // block, specs, out_specs, out_shape, semantics, cost, interpret, sums=sums)
    if dout is None:
        return orient(out)
    # As the inputs: the tokens' and weights' gradients from the kernel's orientation, the vectors' flat.
    dx, dscale, dshift, dw1, db1, dw2, db2 = out
    return (
        orient(dx),
        dscale.reshape(c),
        dshift.reshape(c),
        orient(dw1),
        db1.reshape(hidden),
        orient(dw2),
        db2.reshape(c),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _fused(x, keep, norm_scale, norm_shift, w1, b1, w2, b2, eps, approximate, interpret):
    return _call(x, keep, norm_scale, norm_shift, w1, b1, w2, b2, eps, approximate, interpret)


def _fused_fwd(x, keep, norm_scale, norm_shift, w1, b1, w2, b2, eps, approximate, interpret):
    residuals = (x, keep, norm_scale, norm_shift, w1, b1, w2, b2)
    return _call(*residuals, eps, approximate, interpret), residuals


def _fused_bwd(eps, approximate, interpret, residuals, dout):
    x, keep, *weights = residuals
    dx, *grads = _call(*residuals, eps, approximate, interpret, dout)
    keep_grad = None if keep is None else jnp.zeros_like(keep)  # A random draw, not differentiated.
    return (dx, keep_grad) + tuple(g.astype(w.dtype) for g, w in zip(grads, weights, strict=True))


_fused.defvjp(_fused_fwd, _fused_bwd)


def pays(c: int, tokens: int, hidden: int) -> bool:
    """Whether the fused MLP serves `tokens` rows C wide: whether a grid step's block fits VMEM."""
    return block_tokens(tokens, hidden, c % LANES != 0) > 0


def residual_mlp(
    rows: jax.Array,
    norm_scale,
    norm_shift,
    eps: float,
    w1,
    b1,
    w2,
    b2,
    keep=None,
    approximate_gelu: bool = False,
    interpret: bool | None = None,
) -> jax.Array:
    """rows + keep * fc2(GELU(fc1(LayerNorm(rows)))) of token rows [N, C] (LayerNorm weights `norm_scale`,
    `norm_shift`, epsilon `eps`; fc1 `w1` [C, H] and `b1`, fc2 `w2` [H, C] and `b2`; `keep` each row's
    stochastic-depth scale [N], 0 or 1 / keep probability, or None for 1; GELU exact or, with
    `approximate_gelu`, its tanh form) as one Pallas kernel per device, each on its share of the rows under
    a mesh that shards the batch."""

    def fn(rows, keep, *weights):
        return _fused(rows, keep, *weights, eps, approximate_gelu, interpret)

    return per_device(fn, rows, keep, norm_scale, norm_shift, w1, b1, w2, b2, split=2)

"""Small building blocks shared by the model's branches: annotated layers, drop-path, a PyTorch-style MLP.

Every parameter carries logical axis names ("embed", "mlp", "heads", ...); the trainer maps them onto
mesh axes with the rules table in its config, so no module here knows about devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's initialisations, named for what they mirror, so that the modules the authors train from
# scratch (everything but the Swin and the ResNet body, SPEC §3) start from the same distributions.
# Flax kernels are [..., fan_in, fan_out] (a convolution's receptive field first), so "fan_in" and
# "fan_out" below count as PyTorch does: input (output) channels times the kernel's receptive field.

# Swin's Linear layers and relative-position tables: trunc_normal_(std=0.02) (cut at +-2, as timm's).
TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02)
# `nn.Linear` / `nn.ConvNd` by default: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_DEFAULT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torchvision's ResNet convolutions: kaiming_normal_(mode="fan_out", nonlinearity="relu").
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def uniform_bound(bound: float) -> nnx.Initializer:
    """U(-bound, bound), e.g. PyTorch's default bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_default_bias(fan_in: int) -> nnx.Initializer:
    """The bias PyTorch's `nn.Linear` / `nn.ConvNd` start with: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform_bound(1.0 / fan_in**0.5)


# Logical axis -> mesh axis, first match wins (flax.linen semantics). The trainer's config owns the table
# it uses; this default shards the batch over "data" and parameters' large dimensions over "fsdp".
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("conv_out", "fsdp"),
    ("embed_out", "tensor"),
)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's layout by logical axis names; a no-op unless a mesh and rules are active
    (`jax.set_mesh(mesh)` and `flax.linen.logical_axis_rules(rules)`)."""
    return nn.with_logical_constraint(x, tuple(axes))


@dataclasses.dataclass(frozen=True)
class Precision:
    """Compute dtype (activations, matmuls) and parameter dtype; float32 parameters by default."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32


FP32 = Precision()
BF16 = Precision(dtype=jnp.bfloat16)


def annotated(init: nnx.Initializer, axes: Sequence[str | None]) -> nnx.Initializer:
    """An initializer whose parameter records its logical axis names (see module docstring).

    `eager_sharding=False`: the names are logical, not mesh axes, so Flax must not try to place the
    variable on a mesh when it is created; the trainer maps names to mesh axes and shards the state.
    """
    return nnx.with_partitioning(init, tuple(axes), eager_sharding=False)


def accumulator(dtype):
    """Products accumulate in float32, or in float64 for float64 inputs (tests compare in float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def normalized(x_ref, scale_ref, shift_ref, eps: float, axis: int = 0):
    """LayerNorm over C of a block, C its `axis` (0: a [C, tokens] block, the weights [C, 1]; 1 or -1:
    [.., C], the weights [1, C] or [C]) as flax computes it (in float32, or float64 for float64 tokens;
    variance E[x^2] - E[x]^2): (normalised tokens in the tokens' dtype, x_hat, 1 / std). The Pallas
    kernels' LayerNorm (on refs) and `LayerNorm`'s (on arrays and parameters) alike."""
    x = x_ref[...].astype(accumulator(x_ref.dtype))
    mean = x.mean(axis=axis, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.maximum((x * x).mean(axis=axis, keepdims=True) - mean * mean, 0.0) + eps)
    xhat = (x - mean) * rstd
    return (xhat * scale_ref[...] + shift_ref[...]).astype(x_ref.dtype), xhat, rstd


class Linear(nnx.Linear):
    """nnx.Linear that adds its bias to the float32 product, then rounds once to the compute dtype.

    nnx.Linear casts the bias to the compute dtype first: with bfloat16 compute, a cast of every bias
    every step that XLA runs as an operation of its own (about 1,800 cycles each on a TPU v5e, whatever
    the size), and two roundings of the output. Here the bias joins the product's fusion: with `LayerNorm`
    below, the local fusion from 2.73 to 2.32 million cycles of a train step (v5e estimate, README). In
    float32 it is nnx.Linear. PyTorch's autocast rounds the bias to bfloat16 before its GEMM adds it in
    float32; keeping it float32 differs from that by at most one rounding of the bias.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x, kernel = self.promote_dtype((inputs, self.kernel[...]), dtype=self.dtype)
        acc = accumulator(x.dtype)
        y = self.dot_general(
            x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision, preferred_element_type=acc
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(acc)
        return y.astype(x.dtype)


def linear(
    din: int,
    dout: int,
    axes: tuple[str | None, str | None],
    rngs: nnx.Rngs,
    precision: Precision = FP32,
    *,
    bias: bool = True,
    init: nnx.Initializer = TRUNC_NORMAL,
    bias_init: nnx.Initializer = nnx.initializers.zeros,
) -> nnx.Linear:
    return Linear(
        din,
        dout,
        use_bias=bias,
        kernel_init=annotated(init, axes),
        bias_init=annotated(bias_init, axes[1:]),
        dtype=precision.dtype,
        param_dtype=precision.param_dtype,
        rngs=rngs,
    )


def torch_linear(
    din: int, dout: int, axes: tuple[str | None, str | None], rngs: nnx.Rngs, precision: Precision = FP32
) -> nnx.Linear:
    """A Linear initialised as PyTorch's `nn.Linear` (weights and bias U(-1/sqrt(din), 1/sqrt(din)))."""
    return linear(din, dout, axes, rngs, precision, init=TORCH_DEFAULT, bias_init=torch_default_bias(din))


class LayerNorm(nnx.LayerNorm):
    """nnx.LayerNorm over the last axis that normalises, scales and shifts in float32 and rounds once to the
    compute dtype, as PyTorch's autocast runs `layer_norm` in float32.

    nnx.LayerNorm casts x, scale and shift to the compute dtype and normalises in it: with bfloat16
    compute, a cast of its two weights every step (separate operations to XLA) and bfloat16 arithmetic.
    The arithmetic is the kernels' (`normalized`), whose statistics are Flax's, so in float32 it is
    nnx.LayerNorm up to rounding.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return normalized(x, self.scale, self.bias, self.epsilon, axis=-1)[0].astype(self.dtype or x.dtype)


def layer_norm(dim: int, rngs: nnx.Rngs, precision: Precision = FP32, axis: str | None = "embed") -> nnx.LayerNorm:
    """LayerNorm with PyTorch's epsilon (1e-5), so imported weights give the same outputs."""
    return LayerNorm(
        dim,
        epsilon=1e-5,
        dtype=precision.dtype,
        param_dtype=precision.param_dtype,
        scale_init=annotated(nnx.initializers.ones, (axis,)),
        bias_init=annotated(nnx.initializers.zeros, (axis,)),
        rngs=rngs,
    )


class DropPath(nnx.Module):
    """Stochastic depth: drops a whole residual branch per example (row mode), rescaling the rest."""

    def __init__(self, rate: float, rngs: nnx.Rngs):
        self.rate = rate
        self.rngs = rngs["dropout"].fork()
        self.deterministic = False  # `model.eval()` sets this, like nnx.Dropout's.

    def __call__(self, x: jax.Array, batch: int | None = None) -> jax.Array:
        """`x` with the examples along its first axis, or with `batch` examples' rows back to back along
        it (the Swin blocks' token rows), each example kept or dropped whole."""
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        batch = x.shape[0] if batch is None else batch
        mask = jax.random.bernoulli(self.rngs(), keep, (batch,) + (1,) * (x.ndim - 1))
        mask = jnp.repeat(mask, x.shape[0] // batch, axis=0)
        return jnp.where(mask, x / keep, 0).astype(x.dtype)

    def row_scale(self, rows: int, batch: int) -> jax.Array | None:
        """What `self(x, batch)` multiplies each of x's `rows` rows by, float32 [rows] (0 or 1 / keep
        probability, from the same draw), for kernels that apply it themselves; None when it is 1."""
        if self.deterministic or self.rate == 0.0:
            return None
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, (batch,))
        return jnp.repeat(jnp.where(mask, 1 / keep, 0.0).astype(jnp.float32), rows // batch)


class Mlp(nnx.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout. GELU is exact (erf, as torch.nn.GELU) unless
    `approximate_gelu` (the tanh form): a speed option, since erf is many vector operations per element
    on a TPU (README), at a small change to the function the pretrained weights were trained with."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        dropout: float,
        rngs: nnx.Rngs,
        precision: Precision = FP32,
        approximate_gelu: bool = False,
    ):
        self.fc1 = linear(dim, hidden, ("embed", "mlp"), rngs, precision)
        self.fc2 = linear(hidden, dim, ("mlp", "embed"), rngs, precision)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.approximate_gelu = approximate_gelu

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.drop(jax.nn.gelu(self.fc1(x), approximate=self.approximate_gelu))
        return self.drop(self.fc2(x))

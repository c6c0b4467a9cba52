"""ResNet-18/34 (basic blocks) in NHWC, laid out like torchvision's so its weights import one to one.

The audio branch uses it with a one-channel stem over MFCC chunks (SPEC §3); the standard RGB stem
exists so that parity with torchvision's `resnet34` can be proved on the whole network.

`ResNet.features(x, pairs=True)` runs the stem and the first stage on two inputs side by side in the
channels, through block-diagonal copies of the same kernels, with BatchNorm statistics over both: the
same arithmetic on a layout that fills a TPU's 128 lanes where the first stage's 64 channels fill half,
for twice the multiplications (the other half of each kernel is zeros).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import normalization

from avcanet_jax.layers import FP32, KAIMING_FAN_OUT, Precision, annotated

RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


@dataclasses.dataclass(frozen=True)
class Stem:
    """The first convolution: kernel, stride and padding per spatial axis, and input channels."""

    in_channels: int = 1
    kernel: tuple[int, int] = (7, 1)
    stride: tuple[int, int] = (2, 1)
    padding: tuple[int, int] = (3, 0)


AUDIO_STEM = Stem()
RGB_STEM = Stem(in_channels=3, kernel=(7, 7), stride=(2, 2), padding=(3, 3))


def conv(cin: int, cout: int, kernel, stride, padding, rngs: nnx.Rngs, precision: Precision) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        tuple(kernel),
        strides=tuple(stride),
        padding=tuple((p, p) for p in padding),
        use_bias=False,
        kernel_init=annotated(KAIMING_FAN_OUT, (None, None, None, "conv_out")),  # As torchvision's ResNet.
        dtype=precision.dtype,
        param_dtype=precision.param_dtype,
        rngs=rngs,
    )


class TorchBatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` that keeps its running statistics as PyTorch's BatchNorm does, and its scale and
    bias in float32 when it computes in bfloat16.

    Both normalise a training batch with its biased variance, but PyTorch updates the running variance
    with the unbiased one (times n / (n - 1), n the values per feature); Flax uses the biased one. The
    audio branch's statistics are taken over B x S chunks of a few time-frequency positions each, so
    the two drift apart; this matches PyTorch's, which the authors' evaluation used.

    `nnx.BatchNorm` rounds scale and bias to its compute dtype; here they stay float32, as in PyTorch's
    mixed precision (its BatchNorm keeps float32 weights). On a TPU that is also faster: the gradients
    of the rounded copies were reduced in bfloat16 by separate passes over the activations, while in
    float32 they fuse with the statistics' backward (the base recipe's audio row in
    `python -m avcanet_jax.aot --profile` on a v5e: 5.86 -> 4.56 million cycles).
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None, pairs: int = 1):
        """`pairs` > 1: `x`'s channels hold that many inputs side by side (see `paired`), normalised with
        statistics over all of them, each by the same scale and bias."""
        running = self.use_running_average if use_running_average is None else use_running_average
        if mask is not None:
            return super().__call__(x, use_running_average, mask=mask)
        features = normalization._canonicalize_axes(x.ndim, self.axis)
        reduction = tuple(i for i in range(x.ndim) if i not in features)
        (x,) = self.promote_dtype((x,), dtype=self.dtype)
        if running:
            mean, var = self.mean[...], self.var[...]
        elif pairs > 1:
            mean, var = self._paired_stats(x, reduction, pairs)
            self._track(mean, var, math.prod(x.shape[i] for i in reduction) * pairs)
        else:
            mean, var = normalization._compute_stats(
                x, reduction, dtype=self.dtype, axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups, use_fast_variance=self.use_fast_variance,
            )  # fmt: skip
            self._track(mean, var, math.prod(x.shape[i] for i in reduction))
        scale, bias = self.scale[...], self.bias[...]
        if pairs > 1:
            mean, var, scale, bias = (jnp.tile(v, pairs) for v in (mean, var, scale, bias))
        return normalization._normalize(x, mean, var, scale, bias, reduction, features, self.dtype, self.epsilon)

    def _paired_stats(self, x, reduction, pairs: int):
        """Flax's fast-variance statistics (E[x^2] - E[x]^2, in float32 at least) over every pair member:
        the per-channel means of the paired layout, averaged over the members, which are equally many."""
        if self.axis_name is not None or not self.use_fast_variance or self.num_features * pairs != x.shape[-1]:
            raise ValueError("paired BatchNorm takes the last axis as features, without axis_name or slow variance")
        x = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
        mean = x.mean(reduction).reshape(pairs, -1).mean(0)
        mean2 = (x * x).mean(reduction).reshape(pairs, -1).mean(0)
        return mean, jnp.maximum(mean2 - mean * mean, 0.0)

    def _track(self, mean, var, n: int):
        """Running statistics as PyTorch keeps them: the variance unbiased over the `n` values per feature."""
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean.astype(self.mean.dtype))
        unbiased = var * (n / max(n - 1, 1))
        self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * unbiased.astype(self.var.dtype))


def paired(x: jax.Array) -> jax.Array:
    """[2N, H, W, C] -> [N, H, W, 2C]: inputs 2n and 2n + 1 side by side in the channels."""
    n, h, w, c = x.shape
    return x.reshape(n // 2, 2, h, w, c).transpose(0, 2, 3, 1, 4).reshape(n // 2, h, w, 2 * c)


def unpaired(x: jax.Array) -> jax.Array:
    """The inverse of `paired`."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, 2, c // 2).transpose(0, 3, 1, 2, 4).reshape(2 * n, h, w, c // 2)


def paired_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv` (no bias, as every convolution here) on `paired` inputs: its kernel [kh, kw, I, O] as the
    block-diagonal [kh, kw, 2I, 2O], so each input meets only its own channels."""
    k = conv.kernel[...].astype(conv.dtype or x.dtype)
    zero = jnp.zeros_like(k)
    k = jnp.concatenate([jnp.concatenate([k, zero], 3), jnp.concatenate([zero, k], 3)], 2)
    return jax.lax.conv_general_dilated(
        x.astype(k.dtype), k, conv.strides, conv.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def batch_norm(dim: int, rngs: nnx.Rngs, precision: Precision, zero_init: bool = False) -> TorchBatchNorm:
    """PyTorch's BatchNorm: epsilon 1e-5, weight 1 and bias 0, momentum 0.1 (0.9 here: Flax counts the other
    way), running variance updated with the unbiased batch variance."""
    return TorchBatchNorm(
        dim,
        momentum=0.9,
        epsilon=1e-5,
        dtype=precision.dtype,
        param_dtype=precision.param_dtype,
        scale_init=annotated(nnx.initializers.zeros if zero_init else nnx.initializers.ones, ("conv_out",)),
        bias_init=annotated(nnx.initializers.zeros, ("conv_out",)),
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs, precision: Precision):
        self.conv1 = conv(cin, cout, (3, 3), (stride, stride), (1, 1), rngs, precision)
        self.bn1 = batch_norm(cout, rngs, precision)
        self.conv2 = conv(cout, cout, (3, 3), (1, 1), (1, 1), rngs, precision)
        self.bn2 = batch_norm(cout, rngs, precision)
        self.downsample = nnx.data(None)
        if stride != 1 or cin != cout:
            self.downsample = nnx.data(
                nnx.List(
                    [
                        conv(cin, cout, (1, 1), (stride, stride), (0, 0), rngs, precision),
                        batch_norm(cout, rngs, precision),
                    ]
                )
            )

    def __call__(self, x: jax.Array, pairs: bool = False, unpair: bool = False) -> jax.Array:
        """`pairs`: `x` is `paired`, and so is the output unless `unpair`, which parts the pair after the
        block's first convolutions (in the second stage's first block, whose doubled channels fill the
        lanes by themselves)."""
        p = 2 if pairs and not unpair else 1

        def first(conv):  # A convolution of the block's input.
            if not pairs:
                return conv(x)
            y = paired_conv(conv, x)
            return unpaired(y) if unpair else y

        y = jax.nn.relu(self.bn1(first(self.conv1), pairs=p))
        y = self.bn2(paired_conv(self.conv2, y) if p == 2 else self.conv2(y), pairs=p)
        if self.downsample is not None:
            identity = self.downsample[1](first(self.downsample[0]), pairs=p)
        else:
            identity = unpaired(x) if unpair else x
        return jax.nn.relu(y + identity)


class ResNet(nnx.Module):
    """Stem conv, BN, ReLU, 3x3/2 max-pool, four stages of basic blocks, global average pool.

    `width` is the first stage's channel count (64 in the paper; smaller only for tests and demos).
    Returns pooled features [B, 8 * width]; `fc` (present when num_classes > 0) maps them to logits, which
    only the parity test uses.
    """

    def __init__(
        self,
        depth: int = 34,
        stem: Stem = AUDIO_STEM,
        rngs: nnx.Rngs | None = None,
        precision: Precision = FP32,
        num_classes: int = 0,
        width: int = 64,
    ):
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"resnet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        self.conv1 = conv(stem.in_channels, width, stem.kernel, stem.stride, stem.padding, rngs, precision)
        self.bn1 = batch_norm(width, rngs, precision)
        layers, cin = [], width
        for i, blocks in enumerate(RESNET_DEPTHS[depth]):
            cout = width * 2**i
            layer = []
            for j in range(blocks):
                layer.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, rngs, precision))
                cin = cout
            layers.append(nnx.List(layer))
        self.layers = nnx.List(layers)
        self.num_features = cin
        self.fc = nnx.data(nnx.Linear(cin, num_classes, rngs=rngs) if num_classes else None)

    def features(self, x: jax.Array, pairs: bool = False) -> jax.Array:
        """[N, H, W, C_in] -> [N, 8 * width]. `pairs` (N even): the stem and first stage on `paired` inputs,
        parted in the second stage's first block; the same result, for a TPU (module docstring)."""
        if pairs:
            x = jax.nn.relu(self.bn1(paired_conv(self.conv1, paired(x)), pairs=2))
        else:
            x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, layer in enumerate(self.layers):
            for j, block in enumerate(layer):
                x = block(x, pairs=pairs and (i == 0 or (i, j) == (1, 0)), unpair=pairs and (i, j) == (1, 0))
        return x.mean(axis=(1, 2))

    def __call__(self, x: jax.Array, pairs: bool = False) -> jax.Array:
        feats = self.features(x, pairs)
        return self.fc(feats) if self.fc is not None else feats

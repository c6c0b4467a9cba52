"""Video Swin Transformer (Liu et al. 2022), numerically matching torchvision's `SwinTransformer3d`.

Input and activations are channels-last, [B, T, H, W, C]. Window partitioning, cyclic shifts, masks and
relative-position indices depend only on static shapes, so they are computed in numpy at trace time.
torchvision's behaviour is kept where it matters for loading its weights: when the feature map is not
larger than the window along an axis, the window shrinks to the map and that axis is not shifted, and
the relative-position bias of a shrunken window is read from the top-left block of the full window's
index matrix (`_relative_bias`), exactly as `torchvision.models.video.swin_transformer` does.

Inside a stage the blocks hold their tokens as rows [B * nW * V, C] in the order of their windows
(`Windows`), not as [B, T, H, W, C] maps: LayerNorm, MLP and residuals act per token, so only attention
cares about the order, and a stage then moves its tokens between map and window order once per change of
windows (on entry, between a plain and a shifted block, on exit) instead of twice per block. Rows are
also the layout a TPU tiles best (the Pallas attention reads them as they are): a 5-D map of 28 x 28
tokens gets the batch as its tiled second-minor axis, and every partition into 7 x 7 windows then
shuffles sublanes (`python -m avcanet_jax.aot --profile` showed those copies as the top instructions).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avcanet_jax import fused_mlp, fused_norm, row_permutation, window_attention
from avcanet_jax.layers import (
    FP32,
    TORCH_DEFAULT,
    TRUNC_NORMAL,
    DropPath,
    Mlp,
    Precision,
    annotated,
    layer_norm,
    linear,
    torch_default_bias,
)


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    """Hyper-parameters of a Video Swin backbone (defaults: Swin-T, as torchvision's swin3d_t).

    `attention` picks the window-attention implementation (`avcanet_jax.window_attention`): "xla" (the
    reference), "dot_product" (`jax.nn.dot_product_attention`), "cudnn" (the same through cuDNN's fused
    kernel, GPUs only) or "pallas" (a TPU kernel that keeps the scores on chip; interpreted elsewhere).
    Same numbers; only "xla" has attention dropout.
    """

    patch_size: tuple[int, int, int] = (2, 4, 4)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_prob: float = 0.1
    in_channels: int = 3
    attention: str = "xla"
    approximate_gelu: bool = False  # The MLPs' GELU in its tanh form (faster on TPUs; see layers.Mlp).

    def __post_init__(self):
        if self.attention not in window_attention.IMPLEMENTATIONS:
            raise ValueError(
                f"swin.attention must be one of {window_attention.IMPLEMENTATIONS}, got {self.attention!r}"
            )
        if self.attention != "xla" and self.attention_dropout:
            raise ValueError(
                f"swin.attention={self.attention!r} has no attention dropout; set swin.attention_dropout=0"
            )

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


SWIN_SIZES = {
    "tiny": SwinConfig(),
    "small": SwinConfig(depths=(2, 2, 18, 2)),
    "base": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


def window_and_shift(size, window, shift) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift for a feature map of `size` (torchvision's `_get_window_and_shift_size`)."""
    w = tuple(s if s <= w else w for s, w in zip(size, window, strict=True))
    sh = tuple(0 if s <= w else x for s, w, x in zip(size, window, shift, strict=True))
    return w, sh


@functools.cache
def relative_position_index(window: tuple[int, int, int]) -> np.ndarray:
    """[V, V] index into the bias table for each pair of tokens of a window of volume V."""
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(3, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + np.array(window) - 1
    return rel[..., 0] * (2 * window[1] - 1) * (2 * window[2] - 1) + rel[..., 1] * (2 * window[2] - 1) + rel[..., 2]


@functools.cache
def shift_mask(padded: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]) -> np.ndarray:
    """[nW, V, V] additive mask (0 or -100) that stops shifted windows mixing regions that were not adjacent."""
    region = np.zeros(padded, np.float32)
    bounds = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift, strict=True)]
    count = 0
    for d in bounds[0]:
        for h in bounds[1]:
            for w in bounds[2]:
                region[d[0] : d[1], h[0] : h[1], w[0] : w[1]] = count
                count += 1
    windows = _partition(region[None, ..., None], window)[..., 0]  # [nW, V]
    diff = windows[:, None, :] - windows[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def _partition(x, window):
    """[B, T, H, W, C] -> [B * nW, V, C] (windows in T, H, W order); works on numpy and jax arrays."""
    b, t, h, w, c = x.shape
    wd, wh, ww = window
    x = x.reshape(b, t // wd, wd, h // wh, wh, w // ww, ww, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, wd * wh * ww, c)


def _merge(windows: jax.Array, window, b: int, padded) -> jax.Array:
    """Inverse of `_partition`."""
    wd, wh, ww = window
    t, h, w = padded
    c = windows.shape[-1]
    x = windows.reshape(b, t // wd, h // wh, w // ww, wd, wh, ww, c)
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t, h, w, c)


@dataclasses.dataclass(frozen=True)
class Windows:
    """How a block groups a [batch, *size, C] map into windows: its (possibly shrunken) window and shift
    (`window_and_shift`), and the padding to whole windows. Token rows are [batch * nW * V, C], windows
    batch-major, each window's tokens in T, H, W order (as `_partition` of the padded, rolled map)."""

    batch: int
    size: tuple[int, int, int]
    window: tuple[int, int, int]
    shift: tuple[int, int, int]

    @classmethod
    def of(cls, shape, window, shift) -> Windows:
        """The windows of a block with this window and shift on a map of `shape` [B, T, H, W, C]."""
        size = tuple(shape[1:4])
        return cls(shape[0], size, *window_and_shift(size, window, shift))

    @classmethod
    def whole(cls, shape) -> Windows:
        """The map itself as one window per example: its rows are the map's tokens in T, H, W order."""
        size = tuple(shape[1:4])
        return cls(shape[0], size, size, (0, 0, 0))

    @property
    def padded(self) -> tuple[int, int, int]:
        return tuple(s + (-s) % w for s, w in zip(self.size, self.window, strict=True))

    @property
    def counts(self) -> tuple[int, int, int]:
        """Windows along T, H and W."""
        return tuple(p // w for p, w in zip(self.padded, self.window, strict=True))

    @property
    def volume(self) -> int:
        return math.prod(self.window)

    @property
    def mask(self) -> np.ndarray | None:
        """[nW, V, V] shifted-window mask, or None without a shift."""
        return shift_mask(self.padded, self.window, self.shift) if any(self.shift) else None

    @functools.cached_property
    def valid(self) -> np.ndarray | None:
        """[rows] True where a row is a token of the map, not padding; None without padding (made once
        per `Windows`, which the blocks of a stage share)."""
        if self.padded == self.size:
            return None
        return self.rows(np.ones((self.batch, *self.size, 1), bool), np)[:, 0]

    def rows(self, x, xp=jnp):
        """[B, T, H, W, C] map -> [rows, C] (padding with zeros, rolling by -shift); `xp`: jnp, or np for
        constants."""
        pad = [(0, p - s) for s, p in zip(self.size, self.padded, strict=True)]
        x = xp.pad(x, [(0, 0), *pad, (0, 0)])
        if any(self.shift):
            shift = [-s for s in self.shift]
            x = xp.roll(x, shift, axis=(1, 2, 3))
        windows = _partition(x, self.window)
        return windows.reshape(-1, windows.shape[-1])

    def map(self, rows: jax.Array) -> jax.Array:
        """Inverse of `rows`: [rows, C] -> [B, T, H, W, C] (padding dropped)."""
        x = _merge(rows.reshape(-1, self.volume, rows.shape[-1]), self.window, self.batch, self.padded)
        if any(self.shift):
            x = jnp.roll(x, self.shift, (1, 2, 3))
        t, h, w = self.size
        return x[:, :t, :h, :w]


def _regroup_matrix(src: Windows, dst: Windows, axis: int) -> np.ndarray:
    """[n, w, n', w'] one-hot along one axis (T, H or W): 1 where `src`'s window n, position w holds the
    map position that `dst` puts in window n', position w'. Padding of either side matches nothing, so
    padding rows come out zero, as `Windows.rows` pads."""

    def positions(windows: Windows) -> np.ndarray:  # The map position of each index of the rolled map.
        padded, size = windows.padded[axis], windows.size[axis]
        where = (np.arange(padded) + windows.shift[axis]) % padded
        return np.where(where < size, where, -1)

    a, b = positions(src), positions(dst)
    m = (a[:, None] == b[None, :]) & (a[:, None] >= 0)
    return m.reshape(src.counts[axis], src.window[axis], dst.counts[axis], dst.window[axis]).astype(np.float32)


def regroup_by_products(rows: jax.Array, src: Windows, dst: Windows) -> jax.Array:
    """`dst.rows(src.map(rows))` as products with one one-hot matrix per axis that changes (pad, roll,
    partition and their inverses in one): exact, since each output is one input times 1, accumulated in
    float32 (float32 inputs at full precision)."""
    assert (src.batch, src.size) == (dst.batch, dst.size), (src, dst)
    c = rows.shape[-1]
    x = rows.reshape(src.batch, *src.counts, *src.window, c)
    # Batch, windows along T, H and W, positions in a window along T, H and W, channels; a changed
    # axis pair gets upper-case labels and moves to the end.
    labels = list("btuvxyzc")
    precision = jax.lax.Precision.HIGHEST if rows.dtype == jnp.float32 else None
    for k in range(3):
        if _axis(src, k) == _axis(dst, k):
            continue
        old, new = ["tuv"[k], "xyz"[k]], ["TUV"[k], "XYZ"[k]]
        out = [label for label in labels if label not in old] + new
        spec = f"{''.join(labels)},{''.join(old + new)}->{''.join(out)}"
        matrix = jnp.asarray(_regroup_matrix(src, dst, k), rows.dtype)
        x = jnp.einsum(spec, x, matrix, precision=precision, preferred_element_type=jnp.float32).astype(rows.dtype)
        labels = out
    order = ["b", *(new if new in labels else old for old, new in zip("tuvxyz", "TUVXYZ", strict=True)), "c"]
    return x.transpose([labels.index(label) for label in order]).reshape(-1, c)


def _axis(windows: Windows, k: int) -> tuple[int, int, int]:
    """How `windows` cut axis k (T, H or W): its padded length, window and shift."""
    return windows.padded[k], windows.window[k], windows.shift[k]


def _reshapes_only(src: Windows, dst: Windows) -> bool:
    """Whether every axis keeps its windows or only splits or joins them, unshifted and unpadded (the map
    into a stage's first windows and back): then regrouping is one transpose."""
    plain = lambda w, k: w.shift[k] == 0 and w.padded[k] == w.size[k]  # noqa: E731
    return all(_axis(src, k) == _axis(dst, k) or (plain(src, k) and plain(dst, k)) for k in range(3))


def permutation_sources(src: Windows, dst: Windows) -> np.ndarray:
    """[m] (m tokens per example, neither side padded): the `src` row that `dst` puts at each of its rows."""
    m = math.prod(src.size)
    tokens = np.arange(m).reshape(1, *src.size, 1)
    at_src, at_dst = src.rows(tokens, np)[:, 0], dst.rows(tokens, np)[:, 0]  # The token at each row.
    where = np.empty(m, np.int64)
    where[at_src] = np.arange(m)
    return where[at_dst]


def _kernel_sources(rows: jax.Array, src: Windows, dst: Windows) -> np.ndarray | None:
    """`permutation_sources(src, dst)` where a TPU regroups `rows` with `row_permutation` (whole windows on
    both sides, rows it serves), else None."""
    if src.valid is not None or dst.valid is not None:
        return None
    sources = permutation_sources(src, dst)
    tokens = window_attention.per_device_count(rows.shape[0])
    return sources if row_permutation.serves(sources, rows.shape[-1], tokens) else None


def regroup(rows: jax.Array, src: Windows, dst: Windows, reshapes_by_kernel: bool = False) -> jax.Array:
    """Token rows in `src`'s window order -> in `dst`'s (either may be `Windows.whole`: the map).

    On TPUs, where windows shift or pad: by `row_permutation.permute` (one-hot products in a Pallas kernel,
    reading and writing the C-major rows as they are) where neither side pads and it serves the rows
    (Swin-T's stages 1 and 2 at 112-pixel crops: the base recipe's step on a v5e 35.01 -> 34.43 million
    cycles with stage 2's, -> 33.54 with stage 1's too); else by `regroup_by_products`, whose products XLA
    fuses with their neighbours where it would copy for each transpose and for `jnp.roll` (51.1 -> 48.9
    million, when it was the only way). Where they only split or join (`_reshapes_only`), and on other
    platforms, as `src.map` then `dst.rows`, which cost no arithmetic: on a v5e that is one transpose,
    against the same transpose after two products (stage 1 into its first windows, forward and backward:
    1.65 -> 1.06 M cycles). `reshapes_by_kernel`: those too by the kernel where it serves the rows, as the
    patch embedding moves its rows into stage 1's first windows (forward and backward 0.83 -> 0.43 M
    cycles; stage 2's entry that way left its attention's backward kernel short of VMEM)."""
    by_maps = lambda r: dst.rows(src.map(r))  # noqa: E731
    reshapes = _reshapes_only(src, dst)
    sources = _kernel_sources(rows, src, dst) if reshapes_by_kernel or not reshapes else None
    if sources is None and reshapes:
        return by_maps(rows)
    if sources is not None:
        tpu = lambda r: row_permutation.permute(r, sources)  # noqa: E731
    else:
        tpu = lambda r: regroup_by_products(r, src, dst)  # noqa: E731
    return jax.lax.platform_dependent(rows, tpu=tpu, default=by_maps)


class WindowAttention3d(nnx.Module):
    """Multi-head self-attention within (shifted) 3D windows, with a learned relative-position bias."""

    def __init__(
        self,
        dim: int,
        window: tuple[int, int, int],
        shift: tuple[int, int, int],
        num_heads: int,
        cfg: SwinConfig,
        rngs: nnx.Rngs,
        precision: Precision = FP32,
    ):
        self.window, self.shift, self.num_heads = tuple(window), tuple(shift), num_heads
        self.qkv = linear(dim, 3 * dim, ("embed", "qkv"), rngs, precision)
        self.proj = linear(dim, dim, ("qkv", "embed"), rngs, precision)
        table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nnx.Param(
            annotated(TRUNC_NORMAL, (None, "heads"))(rngs.params(), (table, num_heads), precision.param_dtype)
        )
        self.attn_drop = nnx.Dropout(cfg.attention_dropout, rngs=rngs)
        self.proj_drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.dtype = precision.dtype
        self.impl = cfg.attention

    def _relative_bias(self, window) -> jax.Array:
        """[heads, V, V] bias of a window of this size."""
        vol = int(np.prod(window))
        index = relative_position_index(self.window)[:vol, :vol]  # torchvision's slicing, see module doc.
        bias = self.relative_position_bias_table[...][index.reshape(-1)].reshape(vol, vol, -1)
        return bias.transpose(2, 0, 1).astype(self.dtype)

    def _operands(self, rows: jax.Array, windows: Windows):
        """(tokens, qkv kernel, qkv bias) in the compute dtype, the relative bias and the shift mask."""
        tokens, kernel, qkv_bias = nnx.nn.dtypes.promote_dtype(
            (rows, self.qkv.kernel[...], self.qkv.bias[...]), dtype=self.dtype
        )
        mask = None if windows.mask is None else jnp.asarray(windows.mask)
        return tokens, kernel, qkv_bias, self._relative_bias(windows.window), mask

    def __call__(self, rows: jax.Array, windows: Windows) -> jax.Array:
        """Attention within each window of token rows [B * nW * V, C] in `windows`' order."""
        # The qkv projection without its bias, which the attention adds (the Pallas kernel adds it on chip).
        tokens, kernel, qkv_bias, bias, mask = self._operands(rows, windows)
        qkv = jax.lax.dot_general(tokens, kernel, (((tokens.ndim - 1,), (0,)), ((), ())))
        dropout = self.attn_drop if self.impl == "xla" else None
        out = window_attention.attention(qkv, bias, mask, self.num_heads, self.impl, dropout, qkv_bias)
        return self.proj_drop(self.proj(out))

    def sublayer(self, rows: jax.Array, windows: Windows, norm: nnx.LayerNorm, keep=None) -> jax.Array:
        """`rows + keep * self(norm(rows), windows)` with the Pallas kernel making the LayerNorm, the qkv
        projection, the attention, the output projection, stochastic depth (`keep`: each row's scale, or
        None) and the residual in one pass over the rows (`window_attention.sublayer`); maps without
        padding, and no dropout after the projection."""
        tokens, kernel, qkv_bias, bias, mask = self._operands(rows, windows)
        proj, proj_bias = nnx.nn.dtypes.promote_dtype((self.proj.kernel[...], self.proj.bias[...]), dtype=self.dtype)
        return window_attention.sublayer(
            tokens, norm.scale[...], norm.bias[...], norm.epsilon, kernel, qkv_bias, proj, proj_bias, bias, mask,
            self.num_heads, keep,
        )  # fmt: skip


class SwinBlock3d(nnx.Module):
    """Pre-norm transformer block: x + DropPath(W-MSA(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        shift: tuple[int, int, int],
        drop_path: float,
        cfg: SwinConfig,
        rngs: nnx.Rngs,
        precision: Precision = FP32,
    ):
        self.norm1 = layer_norm(dim, rngs, precision)
        self.attn = WindowAttention3d(dim, cfg.window_size, shift, num_heads, cfg, rngs, precision)
        self.drop_path = DropPath(drop_path, rngs)
        self.norm2 = layer_norm(dim, rngs, precision)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.dropout, rngs, precision, cfg.approximate_gelu)

    def windows(self, shape) -> Windows:
        """The windows this block attends within on a map of `shape` [B, T, H, W, C]."""
        return Windows.of(shape, self.attn.window, self.attn.shift)

    def __call__(self, rows: jax.Array, windows: Windows) -> jax.Array:
        """Token rows [B * nW * V, C] in `windows`' order -> the same rows after the block."""
        return self._mlp(self._attention(rows, windows), windows)

    def _attention(self, rows: jax.Array, windows: Windows) -> jax.Array:
        """The first half: rows + DropPath(W-MSA(LN(rows)))."""
        if self._fuses_attention(rows, windows):
            with jax.named_scope("attention"):  # Its LayerNorm, stochastic depth and the residual included.
                keep = self.drop_path.row_scale(rows.shape[0], windows.batch)
                return self.attn.sublayer(rows, windows, self.norm1, keep)
        with jax.named_scope("norm"):
            y = self.norm1(rows)
            valid = windows.valid
            if valid is not None:  # torchvision pads the normalised map with zeros.
                y = jnp.where(valid[:, None], y, jnp.zeros((), y.dtype))
        with jax.named_scope("attention"):
            y = self.attn(y, windows)
        return rows + self.drop_path(y, windows.batch)

    def _mlp(self, rows: jax.Array, windows: Windows) -> jax.Array:
        """The second half: rows + DropPath(MLP(LN(rows)))."""
        if self._fuses_mlp(rows):
            with jax.named_scope("mlp"):  # Its LayerNorm, stochastic depth and the residual included.
                return self._fused_mlp(rows, windows.batch)
        with jax.named_scope("norm"):
            y = self.norm2(rows)
        with jax.named_scope("mlp"):
            y = self.mlp(y)
        return rows + self.drop_path(y, windows.batch)

    def _fuses_attention(self, rows: jax.Array, windows: Windows) -> bool:
        """Whether the attention half runs as one Pallas kernel (`window_attention.sublayer`): with the
        Pallas attention, rows no wider than `window_attention.SUBLAYER_MAX_WIDTH`, on maps without
        padding, no dropout after it."""
        drop = self.attn.proj_drop
        return (
            self.attn.impl == "pallas"
            and windows.valid is None
            and window_attention.sublayer_pays(rows.shape[-1])
            and (drop.rate == 0 or bool(drop.deterministic))
        )

    def _fuses_mlp(self, rows: jax.Array) -> bool:
        """Whether the LayerNorm and MLP run as one Pallas kernel (`fused_mlp`): with the Pallas attention, no
        dropout inside the MLP, on rows it can block."""
        mlp, tokens = self.mlp, window_attention.per_device_count(rows.shape[0])
        return (
            self.attn.impl == "pallas"
            and (mlp.drop.rate == 0 or bool(mlp.drop.deterministic))
            and fused_mlp.pays(rows.shape[-1], tokens, mlp.fc1.out_features)
        )

    def _fused_mlp(self, rows: jax.Array, batch: int) -> jax.Array:
        """`rows + self.drop_path(self.mlp(self.norm2(rows)), batch)` through `fused_mlp.residual_mlp`, weights
        in the compute dtype as nnx.Linear casts them."""
        fc1, fc2, norm = self.mlp.fc1, self.mlp.fc2, self.norm2
        tokens, w1, b1, w2, b2 = nnx.nn.dtypes.promote_dtype(
            (rows, fc1.kernel[...], fc1.bias[...], fc2.kernel[...], fc2.bias[...]), dtype=fc1.dtype
        )
        keep = self.drop_path.row_scale(rows.shape[0], batch)
        return fused_mlp.residual_mlp(
            tokens, norm.scale[...], norm.bias[...], norm.epsilon, w1, b1, w2, b2, keep, self.mlp.approximate_gelu
        )


class PatchMerging(nnx.Module):
    """2x2 spatial downsampling: concatenate neighbours (padding odd sizes), LayerNorm, Linear 4C -> 2C.

    `fused`: the LayerNorm and Linear as one Pallas kernel on the concatenated token rows
    (`fused_norm.norm_linear`, with the Pallas attention), where XLA normalised the 5-D map.
    """

    def __init__(self, dim: int, rngs: nnx.Rngs, precision: Precision = FP32, fused: bool = False):
        self.norm = layer_norm(4 * dim, rngs, precision)
        self.reduction = linear(4 * dim, 2 * dim, ("embed", "embed_out"), rngs, precision, bias=False)
        self.fused = fused

    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = x.shape[2:4]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        parts = [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]]
        x = jnp.concatenate(parts, axis=-1)
        tokens, width = math.prod(x.shape[:-1]), self.reduction.out_features
        if not (self.fused and fused_norm.pays(x.shape[-1], width, window_attention.per_device_count(tokens))):
            return self.reduction(self.norm(x))
        rows, kernel = nnx.nn.dtypes.promote_dtype(
            (x.reshape(tokens, -1), self.reduction.kernel[...]), dtype=self.reduction.dtype
        )
        out = fused_norm.norm_linear(rows, self.norm.scale[...], self.norm.bias[...], self.norm.epsilon, kernel)
        return out.reshape(*x.shape[:-1], width)


class PatchEmbed3d(nnx.Module):
    """Non-overlapping 3D patches (a strided Conv3d, inputs padded to whole patches), then LayerNorm.

    `fused` (with the Pallas attention): `rows` makes stage 1's token rows straight in its first windows'
    order, which the backbone takes where it can: the convolution on planar frames, the move into windows,
    then the convolution's bias and the LayerNorm as one Pallas kernel on the rows
    (`fused_norm.layer_norm`). The same weights and values as `__call__`, in fewer passes on a TPU (the
    base recipe's step on a v5e: 36.36 -> 35.01 million cycles, `python -m avcanet_jax.aot --profile`; the
    move into windows by the row-permutation kernel instead of XLA's transpose: 33.05 -> 32.63).
    """

    def __init__(self, cfg: SwinConfig, rngs: nnx.Rngs, precision: Precision = FP32, fused: bool = False):
        self.patch = cfg.patch_size
        self.proj = nnx.Conv(
            cfg.in_channels,
            cfg.embed_dim,
            cfg.patch_size,
            strides=cfg.patch_size,
            padding="VALID",
            # torchvision leaves this Conv3d at PyTorch's default (its trunc_normal loop only touches Linears).
            kernel_init=annotated(TORCH_DEFAULT, (None, None, None, None, "embed")),
            bias_init=annotated(torch_default_bias(cfg.in_channels * math.prod(cfg.patch_size)), ("embed",)),
            dtype=precision.dtype,
            param_dtype=precision.param_dtype,
            rngs=rngs,
        )
        self.norm = layer_norm(cfg.embed_dim, rngs, precision)
        self.fused = fused

    def _pad(self, x: jax.Array) -> jax.Array:
        pad = [(-s) % p for s, p in zip(x.shape[1:4], self.patch, strict=True)]
        return jnp.pad(x, ((0, 0), (0, pad[0]), (0, pad[1]), (0, pad[2]), (0, 0)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(self._pad(x)))

    def output_shape(self, shape) -> tuple[int, ...]:
        """The map's shape [B, T', H', W', C] for frames of `shape` [B, T, H, W, 3]."""
        return (shape[0], *(-(-s // p) for s, p in zip(shape[1:4], self.patch, strict=True)), self.proj.out_features)

    def planar(self, x: jax.Array) -> jax.Array:
        """The convolution without its bias, as a 2-D one over frame planes with each patch's frames and colour
        channels as its 6 input channels. On a TPU, XLA holds the frames planar (W along lanes) and then
        convolves them as they are, where for the Conv3d over [.., W, 3] it copied them into a layout with
        the batch along lanes (32 snippets of 128) and the 3 channels padded to 4 rows."""
        x = self._pad(x)
        (b, t, h, w, c), (pt, ph, pw) = x.shape, self.patch
        kernel = self.proj.kernel[...]  # [pt, ph, pw, c, e] -> [ph, pw, pt * c, e]
        x, kernel = nnx.nn.dtypes.promote_dtype((x, kernel), dtype=self.proj.dtype)
        planes = x.reshape(b, t // pt, pt, h, w, c).transpose(0, 1, 2, 5, 3, 4).reshape(b * t // pt, pt * c, h, w)
        kernel = kernel.transpose(1, 2, 0, 3, 4).reshape(ph, pw, pt * c, -1)
        y = jax.lax.conv_general_dilated(planes, kernel, (ph, pw), "VALID", dimension_numbers=("NCHW", "HWIO", "NHWC"))
        return y.reshape(b, t // pt, h // ph, w // pw, -1)

    def rows(self, x: jax.Array, windows: Windows) -> jax.Array | None:
        """LayerNorm(Conv3d(x)) as token rows in `windows`' order (`fused`), or None where the kernel does not
        serve them (windows that pad the map, or too many tokens for a block in VMEM)."""
        c = self.proj.out_features
        tokens = window_attention.per_device_count(math.prod(self.output_shape(x.shape)[:4]))
        if not (self.fused and windows.valid is None and fused_norm.pays(c, c, tokens)):
            return None
        y = self.planar(x)
        rows = regroup(y.reshape(-1, c), Windows.whole(y.shape), windows, reshapes_by_kernel=True)
        return fused_norm.layer_norm(
            rows, self.norm.scale[...], self.norm.bias[...], self.norm.epsilon, self.proj.bias[...]
        )


# What a rematerialised Swin block keeps from its forward pass (`jax.checkpoint` policies): nothing, or
# the outputs of its matrix products without batch dimensions (the qkv, output and MLP projections; the
# attention itself, LayerNorms, GELU and residuals are recomputed).
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_policy(remat: bool | str) -> str | None:
    """The REMAT_POLICIES key of a `remat` setting (False/None: no rematerialisation, True: "full")."""
    if remat is False or remat is None or remat == "none":
        return None
    if remat is True:
        return "full"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat must be False, True or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    return remat


class SwinTransformer3d(nnx.Module):
    """The backbone without a head: [B, T, H, W, 3] -> [B, T', H', W', num_features] (final LayerNorm applied).

    `remat` recomputes each block's activations in the backward pass instead of storing them: all of
    them ("full" or True), or all but the outputs of its Linear layers ("dots"; see REMAT_POLICIES).
    """

    def __init__(self, cfg: SwinConfig, rngs: nnx.Rngs, precision: Precision = FP32, remat: bool | str = False):
        self.cfg, self.remat = cfg, remat_policy(remat)
        self.patch_embed = PatchEmbed3d(cfg, rngs, precision, fused=cfg.attention == "pallas")
        self.pos_drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        total = sum(cfg.depths)
        rates = [cfg.stochastic_depth_prob * i / max(total - 1, 1) for i in range(total)]
        stages, merges = [], []
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            dim = cfg.embed_dim * 2**i
            blocks = []
            for j in range(depth):
                shift = (0, 0, 0) if j % 2 == 0 else tuple(w // 2 for w in cfg.window_size)
                blocks.append(SwinBlock3d(dim, heads, shift, rates[sum(cfg.depths[:i]) + j], cfg, rngs, precision))
            stages.append(nnx.List(blocks))
            if i < len(cfg.depths) - 1:
                merges.append(PatchMerging(dim, rngs, precision, fused=cfg.attention == "pallas"))
        self.stages = nnx.List(stages)
        self.merges = nnx.List(merges)
        self.norm = layer_norm(cfg.num_features, rngs, precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        # The named scopes are what `avcanet_jax.step_profile` attributes compiled instructions to.
        with jax.named_scope("swin"):
            with jax.named_scope("patch_embed"):
                shape = self.patch_embed.output_shape(x.shape)
                layout = self.stages[0][0].windows(shape)
                rows = self.patch_embed.rows(x, layout)
                if rows is None:
                    x = self.patch_embed(x)
                    rows, layout = x.reshape(-1, shape[-1]), Windows.whole(shape)
                rows = self.pos_drop(rows)
            for i, blocks in enumerate(self.stages):
                with jax.named_scope(f"stage{i + 1}"):
                    x = self._stage(blocks, rows, layout, shape)
                    if i < len(self.merges):
                        with jax.named_scope("merge"):
                            x = self.merges[i](x)
                shape, rows, layout = x.shape, x.reshape(-1, x.shape[-1]), Windows.whole(x.shape)
            return self.norm(x)

    def _stage(self, blocks, rows: jax.Array, layout: Windows, shape) -> jax.Array:
        """A stage's blocks on token rows (in `layout`'s order, of a map of `shape`), moved between orders only
        where windows change; returns the map."""
        for j, block in enumerate(blocks):
            windows = block.windows(shape)
            if windows != layout:
                with jax.named_scope("relayout"):
                    rows = regroup(rows, layout, windows)
                layout = windows
            with jax.named_scope(f"block{j}"):
                if self.remat is None:
                    rows = block(rows, windows)
                else:
                    policy = REMAT_POLICIES[self.remat]
                    rows = nnx.remat(type(block).__call__, policy=policy, static_argnums=(2,))(block, rows, windows)
        with jax.named_scope("relayout"):
            return regroup(rows, layout, Windows.whole(shape)).reshape(shape)

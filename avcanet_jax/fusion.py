"""Local-Global Fusion (SPEC §3): how AV-CANet mixes the per-segment audio and visual features.

Stage 1 ("multimodal pyramid attention", after MM-Pyramid) runs L levels in sequence; level i lets a
segment attend only to segments at most d = 2^i away (band mask), mixes self- and cross-modal attention
through learned gates and adds a dilated temporal convolution. The outputs of all levels are then
weighted per segment by scores that the two modalities exchange through a tiny attention layer.
Stage 2 is full bidirectional cross-attention over the segments followed by mean pooling.

Shapes: [B, S, D] throughout (B batch, S segments, D = 512 in the paper).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avcanet_jax.layers import (
    FP32,
    TORCH_DEFAULT,
    Precision,
    annotated,
    layer_norm,
    linear,
    torch_default_bias,
    torch_linear,
    uniform_bound,
)


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Attributes:
    dim: feature size D of both modalities.
    levels: pyramid levels L (dilations 1, 2, ..., 2^(L-1)).
    heads: attention heads in the local stage.
    ffn_dim: hidden size of the transformer layers' feed-forward part.
    dropout: dropout of residual branches and feed-forward (the authors' 0.5).
    attention_dropout: dropout on attention probabilities (0.1).
    global_heads: heads of the global cross-attention.
    faithful_level_weights: reproduce the authors' LayerNorm over the size-1 level scores, which makes
      the score-exchange query a constant; False skips that LayerNorm.
    faithful_clone_init: start as the authors' `clones()` (deep copies of one initialised module) makes
      their pyramid start: in every attention of the local stage q, k, v and out begin identical, and
      every feed-forward of the pyramid begins as the same copy. False initialises each independently.
    """

    dim: int = 512
    levels: int = 4
    heads: int = 8
    ffn_dim: int = 512
    dropout: float = 0.5
    attention_dropout: float = 0.1
    global_heads: int = 8
    faithful_level_weights: bool = True
    faithful_clone_init: bool = True


def band_mask(length: int, reach: int) -> np.ndarray:
    """[S, S] bool: segment p may attend to q when |p - q| <= reach (the authors' `masksize = 2 * reach`)."""
    idx = np.arange(length)
    return np.abs(idx[:, None] - idx[None, :]) <= reach


def both_ways(layer, x: jax.Array, y: jax.Array, mask: np.ndarray | None = None) -> list[jax.Array]:
    """[layer(x, y, y, mask), layer(y, x, x, mask)] as one call on the two batches concatenated: the same
    weights and independent rows, so the same values in half the operations, each of which costs more
    than its [B, S, D] work at these sizes (TPU v5e estimate, the local fusion's cross-attention alone:
    3.18 -> 2.73 M cycles for the local fusion, forward and backward)."""
    keys = jnp.concatenate([y, x])
    return jnp.split(layer(jnp.concatenate([x, y]), keys, keys, mask), 2)


class MultiHeadAttention(nnx.Module):
    """Scaled dot-product attention with separate q/k/v/out projections and an optional boolean mask.

    Initialised as the authors' module it stands for: four `nn.Linear`s (PyTorch's default), or with
    `torch_mha=True` as `nn.MultiheadAttention` initialises itself (xavier_uniform over its stacked
    [3D, D] in-projection, zero in- and out-projection biases, out-projection weight as `nn.Linear`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        attention_dropout: float,
        rngs: nnx.Rngs,
        precision: Precision = FP32,
        torch_mha: bool = False,
    ):
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        if torch_mha:
            zeros, stacked = nnx.initializers.zeros, uniform_bound((6.0 / (dim + 3 * dim)) ** 0.5)
            proj = lambda axes, init: linear(dim, dim, axes, rngs, precision, init=init, bias_init=zeros)  # noqa: E731
            self.q, self.k, self.v = (proj(("embed", "qkv"), stacked) for _ in range(3))
            self.out = proj(("qkv", "embed"), TORCH_DEFAULT)
        else:
            self.q, self.k, self.v = (torch_linear(dim, dim, ("embed", "qkv"), rngs, precision) for _ in range(3))
            self.out = torch_linear(dim, dim, ("qkv", "embed"), rngs, precision)
        self.drop = nnx.Dropout(attention_dropout, rngs=rngs)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
        b, s, d = q.shape
        split = lambda x: x.reshape(b, -1, self.heads, d // self.heads)  # noqa: E731
        qh, kh, vh = split(self.q(q)), split(self.k(k)), split(self.v(v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / np.sqrt(d // self.heads)
        if mask is not None:
            scores = jnp.where(mask, scores, -1e9)
        probs = self.drop(jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(vh.dtype))
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, vh).reshape(b, s, d))


class FeedForward(nnx.Module):
    """Linear -> ReLU -> dropout -> Linear (the authors' PositionwiseFeedForward)."""

    def __init__(self, dim: int, hidden: int, dropout: float, rngs: nnx.Rngs, precision: Precision = FP32):
        self.w1 = torch_linear(dim, hidden, ("embed", "mlp"), rngs, precision)
        self.w2 = torch_linear(hidden, dim, ("mlp", "embed"), rngs, precision)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(self.drop(jax.nn.relu(self.w1(x))))


class TransformerLayer(nnx.Module):
    """TL(q, k, v) = q + drop(MHA(LN(q), k, v)), then + drop(FFN(LN(.))). Only the query is normalised.

    `norm=False` replaces both LayerNorms by the identity (the non-faithful level-weight option).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        rngs: nnx.Rngs,
        precision: Precision = FP32,
        norm: bool = True,
    ):
        self.attn = MultiHeadAttention(dim, heads, attention_dropout, rngs, precision)
        self.ffn = FeedForward(dim, ffn_dim, dropout, rngs, precision)
        self.norm1 = layer_norm(dim, rngs, precision) if norm else nnx.data(None)
        self.norm2 = layer_norm(dim, rngs, precision) if norm else nnx.data(None)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, q, k, v, mask=None):
        n1 = self.norm1(q) if self.norm1 is not None else q
        q = q + self.drop(self.attn(n1, k, v, mask))
        n2 = self.norm2(q) if self.norm2 is not None else q
        return q + self.drop(self.ffn(n2))


class TemporalBlock(nnx.Module):
    """ReLU(x + Conv1x1(ReLU(Conv_k3,dilation d(x)))) along the segment axis, padding keeping length."""

    def __init__(self, dim: int, dilation: int, rngs: nnx.Rngs, precision: Precision = FP32):
        kw = dict(dtype=precision.dtype, param_dtype=precision.param_dtype, rngs=rngs)
        self.conv1 = nnx.Conv(
            dim,
            dim,
            (3,),
            kernel_dilation=(dilation,),
            padding=((dilation, dilation),),
            kernel_init=annotated(TORCH_DEFAULT, (None, "embed", "embed_out")),  # nn.Conv1d's default.
            bias_init=annotated(torch_default_bias(3 * dim), ("embed_out",)),
            **kw,
        )
        self.conv2 = nnx.Conv(
            dim,
            dim,
            (1,),
            kernel_init=annotated(TORCH_DEFAULT, (None, "embed_out", "embed")),
            bias_init=annotated(torch_default_bias(dim), ("embed",)),
            **kw,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x + self.conv2(jax.nn.relu(self.conv1(x))))


class PyramidLevel(nnx.Module):
    """One local level: band-masked self-attention per modality, one cross-attention layer shared by both
    directions, gated merge of the two per modality, then a dilated temporal block per modality."""

    def __init__(self, cfg: FusionConfig, reach: int, rngs: nnx.Rngs, precision: Precision = FP32):
        self.reach = reach
        args = (cfg.dim, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout, rngs, precision)
        self.v_self, self.a_self, self.cross = TransformerLayer(*args), TransformerLayer(*args), TransformerLayer(*args)
        gate = lambda: torch_linear(2 * cfg.dim, cfg.dim, ("mlp", "embed"), rngs, precision)  # noqa: E731
        self.v_gate_self, self.v_gate_cross, self.a_gate_self, self.a_gate_cross = gate(), gate(), gate(), gate()
        self.v_tcn = TemporalBlock(cfg.dim, reach, rngs, precision)
        self.a_tcn = TemporalBlock(cfg.dim, reach, rngs, precision)

    def __call__(self, v: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        mask = band_mask(v.shape[1], self.reach)
        v_sa, a_sa = self.v_self(v, v, v, mask), self.a_self(a, a, a, mask)
        v_ca, a_ca = both_ways(self.cross, v, a, mask)
        v_cat, a_cat = jnp.concatenate([v_sa, v_ca], -1), jnp.concatenate([a_sa, a_ca], -1)
        v = jax.nn.sigmoid(self.v_gate_self(v_cat)) * v_sa + jax.nn.sigmoid(self.v_gate_cross(v_cat)) * v_ca
        a = jax.nn.sigmoid(self.a_gate_self(a_cat)) * a_sa + jax.nn.sigmoid(self.a_gate_cross(a_cat)) * a_ca
        return self.v_tcn(v), self.a_tcn(a)


class LocalFusion(nnx.Module):
    """The pyramid of `levels` levels run in sequence, then the level-weighted sum per segment."""

    def __init__(self, cfg: FusionConfig, rngs: nnx.Rngs, precision: Precision = FP32):
        self.levels = nnx.List([PyramidLevel(cfg, 2**i, rngs, precision) for i in range(cfg.levels)])
        self.v_score = torch_linear(cfg.dim, 1, ("embed", None), rngs, precision)
        self.a_score = torch_linear(cfg.dim, 1, ("embed", None), rngs, precision)
        # Size-1 features, 1 head, no dropout: the authors' score-exchange layer.
        self.exchange = TransformerLayer(
            1, 1, 1, 0.0, cfg.attention_dropout, rngs, precision, norm=cfg.faithful_level_weights
        )
        if cfg.faithful_clone_init:
            self._clone_init()

    def _clone_init(self):
        """The authors build q, k, v and out of each attention as deep copies of one initialised Linear, and
        every feed-forward of the pyramid as a deep copy of one template: so they start equal (and train
        apart)."""
        template = None
        for level in self.levels:
            for layer in (level.v_self, level.a_self, level.cross):
                _same_start(layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.out)
                template = layer.ffn if template is None else template
                _same_start(template.w1, layer.ffn.w1)
                _same_start(template.w2, layer.ffn.w2)
        _same_start(self.exchange.attn.q, self.exchange.attn.k, self.exchange.attn.v, self.exchange.attn.out)

    def level_weights(self, v_levels: jax.Array, a_levels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, S, L] weights of the levels per segment, for each modality."""
        b, s, n, _ = v_levels.shape
        v_w = jax.nn.sigmoid(self.v_score(v_levels)).reshape(b * s, n, 1)
        a_w = jax.nn.sigmoid(self.a_score(a_levels)).reshape(b * s, n, 1)
        v_w2, a_w2 = both_ways(self.exchange, v_w, a_w)
        return v_w2.reshape(b, s, n), a_w2.reshape(b, s, n)

    def __call__(self, v: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        v_out, a_out = [], []
        for level in self.levels:
            v, a = level(v, a)
            v_out.append(v)
            a_out.append(a)
        v_levels, a_levels = jnp.stack(v_out, axis=2), jnp.stack(a_out, axis=2)  # [B, S, L, D]
        v_w, a_w = self.level_weights(v_levels, a_levels)
        return jnp.einsum("bsld,bsl->bsd", v_levels, v_w), jnp.einsum("bsld,bsl->bsd", a_levels, a_w)


def _same_start(source: nnx.Linear, *targets: nnx.Linear) -> None:
    for t in targets:
        t.kernel[...] = source.kernel[...]
        t.bias[...] = source.bias[...]


class GlobalFusion(nnx.Module):
    """Full cross-attention both ways (one attention shared by both directions), a Linear and a residual
    per direction, then the mean over segments: ([B, S, D], [B, S, D]) -> ([B, D], [B, D])."""

    def __init__(self, cfg: FusionConfig, rngs: nnx.Rngs, precision: Precision = FP32):
        self.attn = MultiHeadAttention(cfg.dim, cfg.global_heads, 0.0, rngs, precision, torch_mha=True)
        self.linear_a = torch_linear(cfg.dim, cfg.dim, ("embed", "embed_out"), rngs, precision)
        self.linear_v = torch_linear(cfg.dim, cfg.dim, ("embed", "embed_out"), rngs, precision)

    def __call__(self, v: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        v_attn, a_attn = both_ways(self.attn, v, a)
        a_out = self.linear_a(a_attn) + a
        v_out = self.linear_v(v_attn) + v
        return v_out.mean(axis=1), a_out.mean(axis=1)

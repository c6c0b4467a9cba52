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

from avcanet_jax.layers import FP32, Precision, annotated, layer_norm, linear


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
    """

    dim: int = 512
    levels: int = 4
    heads: int = 8
    ffn_dim: int = 512
    dropout: float = 0.5
    attention_dropout: float = 0.1
    global_heads: int = 8
    faithful_level_weights: bool = True


def band_mask(length: int, reach: int) -> np.ndarray:
    """[S, S] bool: segment p may attend to q when |p - q| <= reach (the authors' `masksize = 2 * reach`)."""
    idx = np.arange(length)
    return np.abs(idx[:, None] - idx[None, :]) <= reach


class MultiHeadAttention(nnx.Module):
    """Scaled dot-product attention with separate q/k/v/out projections and an optional boolean mask."""

    def __init__(
        self,
        dim: int,
        heads: int,
        attention_dropout: float,
        rngs: nnx.Rngs,
        precision: Precision = FP32,
    ):
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = linear(dim, dim, ("embed", "qkv"), rngs, precision, init=nnx.initializers.lecun_normal())
        self.k = linear(dim, dim, ("embed", "qkv"), rngs, precision, init=nnx.initializers.lecun_normal())
        self.v = linear(dim, dim, ("embed", "qkv"), rngs, precision, init=nnx.initializers.lecun_normal())
        self.out = linear(dim, dim, ("qkv", "embed"), rngs, precision, init=nnx.initializers.lecun_normal())
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
        self.w1 = linear(dim, hidden, ("embed", "mlp"), rngs, precision, init=nnx.initializers.lecun_normal())
        self.w2 = linear(hidden, dim, ("mlp", "embed"), rngs, precision, init=nnx.initializers.lecun_normal())
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
            kernel_init=annotated(nnx.initializers.lecun_normal(), (None, "embed", "embed_out")),
            bias_init=annotated(nnx.initializers.zeros, ("embed_out",)),
            **kw,
        )
        self.conv2 = nnx.Conv(
            dim,
            dim,
            (1,),
            kernel_init=annotated(nnx.initializers.lecun_normal(), (None, "embed_out", "embed")),
            bias_init=annotated(nnx.initializers.zeros, ("embed",)),
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
        gate = lambda: linear(2 * cfg.dim, cfg.dim, ("mlp", "embed"), rngs, precision)  # noqa: E731
        self.v_gate_self, self.v_gate_cross, self.a_gate_self, self.a_gate_cross = gate(), gate(), gate(), gate()
        self.v_tcn = TemporalBlock(cfg.dim, reach, rngs, precision)
        self.a_tcn = TemporalBlock(cfg.dim, reach, rngs, precision)

    def __call__(self, v: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        mask = band_mask(v.shape[1], self.reach)
        v_sa, a_sa = self.v_self(v, v, v, mask), self.a_self(a, a, a, mask)
        v_ca, a_ca = self.cross(v, a, a, mask), self.cross(a, v, v, mask)
        v_cat, a_cat = jnp.concatenate([v_sa, v_ca], -1), jnp.concatenate([a_sa, a_ca], -1)
        v = jax.nn.sigmoid(self.v_gate_self(v_cat)) * v_sa + jax.nn.sigmoid(self.v_gate_cross(v_cat)) * v_ca
        a = jax.nn.sigmoid(self.a_gate_self(a_cat)) * a_sa + jax.nn.sigmoid(self.a_gate_cross(a_cat)) * a_ca
        return self.v_tcn(v), self.a_tcn(a)


class LocalFusion(nnx.Module):
    """The pyramid of `levels` levels run in sequence, then the level-weighted sum per segment."""

    def __init__(self, cfg: FusionConfig, rngs: nnx.Rngs, precision: Precision = FP32):
        self.levels = nnx.List([PyramidLevel(cfg, 2**i, rngs, precision) for i in range(cfg.levels)])
        self.v_score = linear(cfg.dim, 1, ("embed", None), rngs, precision)
        self.a_score = linear(cfg.dim, 1, ("embed", None), rngs, precision)
        # Size-1 features, 1 head, no dropout: the authors' score-exchange layer.
        self.exchange = TransformerLayer(
            1, 1, 1, 0.0, cfg.attention_dropout, rngs, precision, norm=cfg.faithful_level_weights
        )

    def level_weights(self, v_levels: jax.Array, a_levels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, S, L] weights of the levels per segment, for each modality."""
        b, s, n, _ = v_levels.shape
        v_w = jax.nn.sigmoid(self.v_score(v_levels)).reshape(b * s, n, 1)
        a_w = jax.nn.sigmoid(self.a_score(a_levels)).reshape(b * s, n, 1)
        v_w2, a_w2 = self.exchange(v_w, a_w, a_w), self.exchange(a_w, v_w, v_w)
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


class GlobalFusion(nnx.Module):
    """Full cross-attention both ways (one attention shared by both directions), a Linear and a residual
    per direction, then the mean over segments: ([B, S, D], [B, S, D]) -> ([B, D], [B, D])."""

    def __init__(self, cfg: FusionConfig, rngs: nnx.Rngs, precision: Precision = FP32):
        self.attn = MultiHeadAttention(cfg.dim, cfg.global_heads, 0.0, rngs, precision)
        self.linear_a = linear(cfg.dim, cfg.dim, ("embed", "embed_out"), rngs, precision)
        self.linear_v = linear(cfg.dim, cfg.dim, ("embed", "embed_out"), rngs, precision)

    def __call__(self, v: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        a_out = self.linear_a(self.attn(a, v, v)) + a
        v_out = self.linear_v(self.attn(v, a, a)) + v
        return v_out.mean(axis=1), a_out.mean(axis=1)

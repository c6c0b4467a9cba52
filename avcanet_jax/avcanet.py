"""AV-CANet: Video Swin visual branch, ResNet audio branch, Local-Global Fusion, shared-weight classifier.

Inputs are what the input pipeline yields: `video` uint8 [B, S, F, H, W, 3] (normalised here, as the
authors' network does: x / 255 - 100 / 255) and `audio` float32 [B, S, T, D] (one MFCC chunk per
segment). The output holds the fused logits and, where the fusion method defines them, the audio-only
and visual-only logits that the loss and metrics also use.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from avcanet_jax.fusion import FusionConfig, GlobalFusion, LocalFusion
from avcanet_jax.layers import BF16, FP32, Precision, constrain, torch_linear
from avcanet_jax.resnet import AUDIO_STEM, ResNet, batch_norm
from avcanet_jax.swin3d import SWIN_SIZES, SwinConfig, SwinTransformer3d, remat_policy

FUSIONS = ("concat", "sum", "gated", "film")
MODALITIES = ("audio_visual", "audio", "visual")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network; the trainer's config builds it (see configs/).

    Attributes:
      num_classes: output classes.
      swin: Video Swin size name ("tiny", "small", "base") or a SwinConfig.
      resnet_depth: 18 or 34.
      resnet_width: channels of the first ResNet stage (64; smaller for demos).
      resnet_pairs: run the audio ResNet's stem and first stage on two MFCC chunks side by side in the
        channels (`resnet.paired`): the same result, in the lanes of a TPU (`config_checks` turns it on
        there); used when a clip's segment count is even.
      dim: joint feature size D (the paper's 512).
      visual_dropout: dropout on pooled Swin features (0.5).
      fusion: classifier fusion: "concat" (the paper), "sum", "gated" or "film".
      modalities: "audio_visual", or a single-branch ablation "audio" / "visual".
      use_local, use_global: the LGF ablations (without global, segments are mean-pooled).
      lgf: Local-Global Fusion hyper-parameters.
      bfloat16: compute in bfloat16 with float32 parameters.
      remat: recompute Swin blocks' activations in the backward pass: False, True / "full", or "dots"
        (keep the Linear layers' outputs; see `swin3d.REMAT_POLICIES`).
    """

    num_classes: int = 6
    swin: str | SwinConfig = "tiny"
    resnet_depth: int = 34
    resnet_width: int = 64
    resnet_pairs: bool = False
    dim: int = 512
    visual_dropout: float = 0.5
    fusion: str = "concat"
    modalities: str = "audio_visual"
    use_local: bool = True
    use_global: bool = True
    lgf: FusionConfig = FusionConfig()
    bfloat16: bool = False
    remat: bool | str = False

    def __post_init__(self):
        remat_policy(self.remat)  # Raises, naming model.remat, on an unknown policy.
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.modalities not in MODALITIES:
            raise ValueError(f"model.modalities must be one of {MODALITIES}, got {self.modalities!r}")
        if isinstance(self.swin, str) and self.swin not in SWIN_SIZES:
            raise ValueError(f"model.swin must be one of {sorted(SWIN_SIZES)} or a SwinConfig, got {self.swin!r}")
        if self.lgf.dim != self.dim:
            raise ValueError(f"model.lgf.dim ({self.lgf.dim}) must equal model.dim ({self.dim})")

    @property
    def swin_config(self) -> SwinConfig:
        return SWIN_SIZES[self.swin] if isinstance(self.swin, str) else self.swin

    @property
    def precision(self) -> Precision:
        return BF16 if self.bfloat16 else FP32


class VisualBranch(nnx.Module):
    """Each snippet through Video Swin; mean over H, W; dropout; mean over time; Linear -> D. [B, S, D]."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        p = cfg.precision
        self.backbone = SwinTransformer3d(cfg.swin_config, rngs, p, remat=cfg.remat)
        self.drop = nnx.Dropout(cfg.visual_dropout, rngs=rngs)
        self.proj = torch_linear(cfg.swin_config.num_features, cfg.dim, ("embed", "embed_out"), rngs, p)
        self.dtype = p.dtype

    def __call__(self, video: jax.Array) -> jax.Array:
        b, s = video.shape[:2]
        x = video.reshape(b * s, *video.shape[2:]).astype(self.dtype) / 255.0 - 100.0 / 255.0
        x = self.backbone(constrain(x, ("batch", None, None, None, None)))  # [B*S, T', H', W', C]
        x = self.drop(x.mean(axis=(2, 3))).mean(axis=1)
        return constrain(self.proj(x).reshape(b, s, -1), ("batch", None, "embed"))


class AudioBranch(nnx.Module):
    """Each MFCC chunk through the 1-channel ResNet; Linear -> D, BatchNorm over all B*S chunks, tanh."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        p = cfg.precision
        self.backbone = ResNet(cfg.resnet_depth, AUDIO_STEM, rngs, p, width=cfg.resnet_width)
        self.proj = torch_linear(self.backbone.num_features, cfg.dim, ("embed", "embed_out"), rngs, p)
        self.norm = batch_norm(cfg.dim, rngs, p)
        self.dtype = p.dtype
        self.pairs = cfg.resnet_pairs

    def __call__(self, audio: jax.Array) -> jax.Array:
        b, s, t, d = audio.shape
        x = constrain(audio.reshape(b * s, t, d, 1).astype(self.dtype), ("batch", None, None, None))
        x = self.backbone(x, pairs=self.pairs and s % 2 == 0)  # Pairs within a clip: on one device.
        return constrain(jnp.tanh(self.norm(self.proj(x))).reshape(b, s, -1), ("batch", None, "embed"))


class Classifier(nnx.Module):
    """Fused logits and the unimodal logits each fusion method defines.

    concat: z = W [a; v] + b, z_a = W[:, :D] a + b/2, z_v = W[:, D:] v + b/2 (no extra parameters).
    sum: z = W_a a + b_a + W_v v + b_v, z_a and z_v its two terms. gated and film (the authors' modules)
    have no unimodal logits.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        p, d, n = cfg.precision, cfg.dim, cfg.num_classes
        self.fusion, self.dim = cfg.fusion, d
        if cfg.modalities != "audio_visual":  # One branch: a plain linear head.
            self.out = torch_linear(d, n, ("embed", None), rngs, p)
        elif cfg.fusion == "concat":
            self.out = torch_linear(2 * d, n, ("embed", None), rngs, p)
        elif cfg.fusion == "sum":
            self.fc_a, self.fc_v = (
                torch_linear(d, n, ("embed", None), rngs, p),
                torch_linear(d, n, ("embed", None), rngs, p),
            )
        elif cfg.fusion == "gated":
            self.fc_a, self.fc_v = (
                torch_linear(d, d, ("embed", "mlp"), rngs, p),
                torch_linear(d, d, ("embed", "mlp"), rngs, p),
            )
            self.out = torch_linear(d, n, ("mlp", None), rngs, p)
        else:  # film: audio features modulate the visual ones.
            self.film = torch_linear(d, 2 * d, ("embed", "mlp"), rngs, p)
            self.out = torch_linear(d, n, ("embed", None), rngs, p)

    def __call__(self, a: jax.Array | None, v: jax.Array | None) -> dict[str, jax.Array]:
        if a is None or v is None:  # Single-modality ablation.
            return {"logits": self.out(a if v is None else v)}
        if self.fusion == "concat":
            w, bias = self.out.kernel[...], self.out.bias[...]
            za = a @ w[: self.dim].astype(a.dtype) + bias.astype(a.dtype) / 2
            zv = v @ w[self.dim :].astype(v.dtype) + bias.astype(v.dtype) / 2
            return {"logits": za + zv, "logits_audio": za, "logits_visual": zv}
        if self.fusion == "sum":
            za, zv = self.fc_a(a), self.fc_v(v)
            return {"logits": za + zv, "logits_audio": za, "logits_visual": zv}
        if self.fusion == "gated":
            return {"logits": self.out(jax.nn.sigmoid(self.fc_a(a)) * self.fc_v(v))}
        gamma, beta = jnp.split(self.film(a), 2, axis=-1)
        return {"logits": self.out(gamma * v + beta)}


class AVCANet(nnx.Module):
    """The whole network: {"video", "audio"} batch -> {"logits", "logits_audio", "logits_visual"}."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        p = cfg.precision
        both = cfg.modalities == "audio_visual"
        self.visual = VisualBranch(cfg, rngs) if cfg.modalities != "audio" else nnx.data(None)
        self.audio = AudioBranch(cfg, rngs) if cfg.modalities != "visual" else nnx.data(None)
        self.local = LocalFusion(cfg.lgf, rngs, p) if both and cfg.use_local else nnx.data(None)
        self.glob = GlobalFusion(cfg.lgf, rngs, p) if both and cfg.use_global else nnx.data(None)
        self.classifier = Classifier(cfg, rngs)

    def __call__(self, video: jax.Array | None, audio: jax.Array | None) -> dict[str, jax.Array]:
        # Named scopes: the parts `avcanet_jax.step_profile` reports.
        with jax.named_scope("visual"):
            v = self.visual(video) if self.visual is not None else None
        with jax.named_scope("audio"):
            a = self.audio(audio) if self.audio is not None else None
        with jax.named_scope("local_fusion"):
            if self.local is not None:
                v, a = self.local(v, a)
        with jax.named_scope("global_fusion"):
            if self.glob is not None:
                v, a = self.glob(v, a)
            else:
                v = v.mean(axis=1) if v is not None else None
                a = a.mean(axis=1) if a is not None else None
        with jax.named_scope("classifier"):
            out = self.classifier(a, v)
        return {k: constrain(x.astype(jnp.float32), ("batch", None)) for k, x in out.items()}

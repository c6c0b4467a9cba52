"""From an `ml_collections` config to the typed configs the code uses, checked before anything compiles.

Every error names the config field to change, e.g. "config.batch_size (10) must be divisible by ...",
so a typo on a pod fails in seconds instead of after a long compilation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax

from avcanet_jax.avcanet import ModelConfig
from avcanet_jax.cli import UserError
from avcanet_jax.clip_sampling import ClipSpec
from avcanet_jax.fusion import FusionConfig
from avcanet_jax.input_pipeline import PipelineConfig
from avcanet_jax.sharding import mesh_shape
from avcanet_jax.swin3d import SWIN_SIZES, SwinConfig
from avcanet_jax.window_attention import IMPLEMENTATIONS

KNOWN_DATASETS = ("emotions", "video_emotion8", "ekman6")
BATCH_AXES = ("data", "fsdp")  # Mesh axes the batch is split over (see layers.DEFAULT_RULES).


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field."""


def _swin(value, attention: str, approximate_gelu: bool = False) -> SwinConfig:
    if hasattr(value, "to_dict"):  # A dict field comes back as a ConfigDict from config.json.
        value = value.to_dict()
    if isinstance(value, str):
        if value not in SWIN_SIZES:
            raise ConfigError(
                f"config.model.swin: {value!r} is not one of {sorted(SWIN_SIZES)} or a dict of SwinConfig fields"
            )
        base = SWIN_SIZES[value]
    elif isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(SwinConfig)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ConfigError(f"config.model.swin: unknown fields {unknown}; known: {sorted(fields)}")
        base = SwinConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    else:
        raise ConfigError(f"config.model.swin: expected a size name or a dict, got {type(value).__name__}")
    try:
        return dataclasses.replace(base, attention=attention, approximate_gelu=approximate_gelu)
    except ValueError as e:
        raise ConfigError(f"config.model.attention: {e}") from e


def gpu_has_fused_attention() -> bool:
    """Whether this machine's GPU runs cuDNN's fused (flash) attention: NVIDIA, compute capability 8.0
    (Ampere) or later. A ROCm device's capability is a "gfx..." name, and no GPU at all answers False."""
    try:
        return float(jax.devices("gpu")[0].compute_capability) >= 8.0
    except (RuntimeError, AttributeError, IndexError, ValueError):
        return False


def _attention(m, platform: str) -> str:
    """`model.attention`, with "auto" resolved for the platform the model will be compiled for: the Pallas
    kernel on TPUs; cuDNN's fused attention on NVIDIA GPUs from Ampere on, in bfloat16 (measured faster
    than the reference on an H200, README); the XLA reference elsewhere (the kernel only compiles for
    TPUs, and cuDNN takes only 16-bit inputs). Configs saved before the field existed said
    `model.fused_attention` (bool)."""
    if "attention" not in m:
        return "dot_product" if m.get("fused_attention", False) else "xla"
    if m.attention == "auto":
        if platform == "tpu":
            return "pallas"
        return "cudnn" if platform == "gpu" and m.bfloat16 and gpu_has_fused_attention() else "xla"
    if m.attention not in IMPLEMENTATIONS:
        raise ConfigError(f"config.model.attention: {m.attention!r} is not one of {('auto', *IMPLEMENTATIONS)}")
    if m.attention == "cudnn" and platform != "gpu":
        raise ConfigError(f"config.model.attention: 'cudnn' runs on NVIDIA GPUs only, not {platform!r}; use 'auto'")
    if m.attention == "cudnn" and not m.bfloat16:
        raise ConfigError(
            "config.model.attention: 'cudnn' takes bfloat16 inputs only; set config.model.bfloat16=True or use 'auto'"
        )
    return m.attention


def _resnet_pairs(m, platform: str) -> bool:
    """`model.resnet_pairs`, with "auto" resolved: on TPUs when the first stage's channels fill at most half
    of the 128 lanes (`resnet.paired`; a v5e's step estimate 32.63 -> 32.19 million cycles in the base
    recipe, README). Elsewhere the block-diagonal kernels' doubled multiplications would only cost."""
    value = m.get("resnet_pairs", "auto")
    if value == "auto":
        return platform == "tpu" and m.resnet_width <= 64
    if not isinstance(value, bool):
        raise ConfigError(f"config.model.resnet_pairs: {value!r} is not one of ('auto', True, False)")
    return value


def model_config(c, platform: str | None = None) -> ModelConfig:
    """The model the config describes, for `platform` (default: JAX's default backend), which decides
    `model.attention = "auto"` and `model.resnet_pairs = "auto"`."""
    m = c.model
    platform = platform or jax.default_backend()
    try:
        return ModelConfig(
            num_classes=m.num_classes,
            swin=_swin(m.swin, _attention(m, platform), m.get("approximate_gelu", False)),
            resnet_depth=m.resnet_depth, resnet_width=m.resnet_width, resnet_pairs=_resnet_pairs(m, platform),
            dim=m.dim, fusion=m.fusion,
            modalities=m.modalities, use_local=m.use_local, use_global=m.use_global,
            lgf=FusionConfig(
                dim=m.dim, levels=m.lgf_levels, heads=m.lgf_heads, global_heads=m.get("lgf_global_heads", m.lgf_heads),
                ffn_dim=m.lgf_ffn_dim, dropout=m.lgf_dropout, attention_dropout=m.get("lgf_attention_dropout", 0.1),
                faithful_level_weights=m.faithful_level_weights,
                faithful_clone_init=m.get("faithful_clone_init", False),
            ),
            visual_dropout=m.visual_dropout, bfloat16=m.bfloat16, remat=m.remat,
        )  # fmt: skip
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"config.{e}" if str(e).startswith("model.") else f"config.model: {e}") from e


def clip_spec(c) -> ClipSpec:
    d = c.data
    try:
        return ClipSpec(
            num_segments=d.num_segments, frames_per_segment=d.frames_per_segment, crop_size=d.crop_size,
            audio_frames=d.audio_frames, augment_prob=d.augment_prob,
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"config.data.audio_frames / config.data.num_segments: {e}") from e


def eval_views(c) -> tuple[int, int]:
    """(temporal, spatial) evaluation views; configs saved before `eval` existed mean (1, 1)."""
    views = c.get("eval", None)
    return (views.temporal_views, views.spatial_views) if views is not None else (1, 1)


def pipeline_config(c) -> PipelineConfig:
    return PipelineConfig(
        dataset=c.data.dataset, data_dir=c.data.data_dir, clip=clip_spec(c), global_batch_size=c.batch_size,
        seed=c.seed, num_workers=c.data.num_workers, eval_views=eval_views(c),
    )  # fmt: skip


def validate(c, num_devices: int | None = None, num_processes: int | None = None) -> dict:
    """Checks the whole config; returns the resolved mesh shape. Raises ConfigError naming the field."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    num_processes = jax.process_count() if num_processes is None else num_processes
    name = c.data.dataset.split("/")[0]
    if name not in KNOWN_DATASETS:
        raise ConfigError(f"config.data.dataset: unknown dataset {c.data.dataset!r}; known: {list(KNOWN_DATASETS)}")
    try:
        mesh = mesh_shape(c.mesh.axes, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from e
    batch_shards = math.prod(mesh.get(a, 1) for a in BATCH_AXES)
    if c.batch_size <= 0 or c.batch_size % batch_shards:
        raise ConfigError(
            f"config.batch_size ({c.batch_size}) must be a positive multiple of the batch mesh axes "
            f"{'x'.join(BATCH_AXES)} = {batch_shards}"
        )
    if c.batch_size % num_processes:
        raise ConfigError(f"config.batch_size ({c.batch_size}) must be divisible by the {num_processes} processes")
    for field, value in (("grad_accumulation", c.grad_accumulation), ("num_epochs", c.num_epochs)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.{field} must be a positive integer, got {value!r}")
    if c.optimizer.lr <= 0:
        raise ConfigError(f"config.optimizer.lr must be positive, got {c.optimizer.lr}")
    if c.optimizer.mu_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.optimizer.mu_dtype must be 'float32' or 'bfloat16', got {c.optimizer.mu_dtype!r}")
    if c.loss not in ("ep_ce", "ce"):
        raise ConfigError(f"config.loss must be 'ep_ce' or 'ce', got {c.loss!r}")
    if len(c.ep_ce_lambdas) != 3:
        raise ConfigError(f"config.ep_ce_lambdas needs 3 values (positive, neutral, negative), got {c.ep_ce_lambdas}")
    temporal, spatial = eval_views(c)
    if not isinstance(temporal, int) or temporal < 1:
        raise ConfigError(f"config.eval.temporal_views must be a positive integer, got {temporal!r}")
    if spatial not in (1, 3):
        raise ConfigError(
            f"config.eval.spatial_views must be 1 (centre crop) or 3 (start, centre, end), got {spatial!r}"
        )
    clip_spec(c)
    model_config(c)
    return mesh

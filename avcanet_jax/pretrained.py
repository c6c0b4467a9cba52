"""Importing PyTorch checkpoints into our modules: Video Swin (torchvision and the Video Swin authors'
layouts, or a 2D Swin inflated to 3D) and torchvision ResNets.

Users bring the files; nothing is downloaded. A `.pth`/`.pt` file is read with
`torch.load(weights_only=True)`, which refuses pickled code, so a downloaded checkpoint cannot run
anything; `.safetensors` and `.npz` files need no torch at all. Every import checks that each
parameter of the target module is found with the right shape and that nothing in the checkpoint is
left unused (heads and buffers excepted), and names the offending keys otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flax import nnx

from avcanet_jax.resnet import ResNet
from avcanet_jax.swin3d import SwinTransformer3d

# Checkpoint entries that are not parameters of a backbone: classifier heads, recomputable buffers.
_IGNORED = re.compile(r"(^|\.)(head|fc|cls_head)\.|relative_position_index$|num_batches_tracked$|attn_mask$")


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the module: lists missing, unexpected and mis-shaped keys."""


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A flat {name: float32 array} from a .pth/.pt (torch needed), .safetensors or .npz file.

    Nested checkpoints ({"state_dict": ...}, {"model": ...}, {"module": ...}) are unwrapped.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs torch (pip install torch); or convert it to .safetensors or .npz first"
        ) from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}


def strip_prefix(state: Mapping[str, np.ndarray], prefixes: Iterable[str] = ("module.", "backbone.")) -> dict:
    out = dict(state)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) or _IGNORED.search(k) for k in out):
            out = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in out.items()}
    return out


# --------------------------------------------------------------------------------------------------------
# Converters from PyTorch tensors to our parameter layouts.


def _linear(w: np.ndarray) -> np.ndarray:
    return w.T  # [out, in] -> [in, out]


def _conv(w: np.ndarray) -> np.ndarray:
    return np.moveaxis(w, (0, 1), (-1, -2))  # [out, in, *k] -> [*k, in, out]


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _norm(prefix: str, ours: tuple) -> dict:
    return {f"{prefix}.weight": (ours + ("scale",), _same), f"{prefix}.bias": (ours + ("bias",), _same)}


def _dense(prefix: str, ours: tuple, bias: bool = True) -> dict:
    out = {f"{prefix}.weight": (ours + ("kernel",), _linear)}
    if bias:
        out[f"{prefix}.bias"] = (ours + ("bias",), _same)
    return out


def swin3d_keys(model: SwinTransformer3d, layout: str = "torchvision") -> dict[str, tuple[tuple, Callable]]:
    """{checkpoint key: (our parameter path, converter)} for a Video Swin in `layout`.

    Layouts: "torchvision" (`features.{2i}.{j}`, `mlp.0/3`) and "mmaction" (the Video Swin authors':
    `layers.{i}.blocks.{j}`, `mlp.fc1/fc2`, `layers.{i}.downsample`).
    """
    keys = {"patch_embed.proj.weight": (("patch_embed", "proj", "kernel"), _conv)}
    keys["patch_embed.proj.bias"] = (("patch_embed", "proj", "bias"), _same)
    keys.update(_norm("patch_embed.norm", ("patch_embed", "norm")))
    for i, depth in enumerate(model.cfg.depths):
        for j in range(depth):
            t = f"features.{2 * i}.{j}" if layout == "torchvision" else f"layers.{i}.blocks.{j}"
            o = ("stages", i, j)
            keys.update(_norm(f"{t}.norm1", o + ("norm1",)))
            keys.update(_norm(f"{t}.norm2", o + ("norm2",)))
            keys.update(_dense(f"{t}.attn.qkv", o + ("attn", "qkv")))
            keys.update(_dense(f"{t}.attn.proj", o + ("attn", "proj")))
            keys[f"{t}.attn.relative_position_bias_table"] = (o + ("attn", "relative_position_bias_table"), _same)
            fc1, fc2 = ("mlp.0", "mlp.3") if layout == "torchvision" else ("mlp.fc1", "mlp.fc2")
            keys.update(_dense(f"{t}.{fc1}", o + ("mlp", "fc1")))
            keys.update(_dense(f"{t}.{fc2}", o + ("mlp", "fc2")))
        if i < len(model.cfg.depths) - 1:
            t = f"features.{2 * i + 1}" if layout == "torchvision" else f"layers.{i}.downsample"
            keys.update(_norm(f"{t}.norm", ("merges", i, "norm")))
            keys.update(_dense(f"{t}.reduction", ("merges", i, "reduction"), bias=False))
    keys.update(_norm("norm", ("norm",)))
    return keys


def inflate_swin2d(state: Mapping[str, np.ndarray], model: SwinTransformer3d) -> dict[str, np.ndarray]:
    """A 2D Swin checkpoint (e.g. ImageNet-22K Swin-T) as a Video Swin one, in the "mmaction" layout.

    The patch-embedding kernel is repeated over the temporal patch size and divided by it (a still video
    then gives the 2D features), and each relative-position bias table is resized to the 3D window's
    (2*Wh-1)(2*Ww-1) rows if needed (bicubic, as the Video Swin authors do) and tiled 2*Wd-1 times along
    time (SPEC §3).
    """
    import jax

    out = {}
    wd, wh, ww = model.cfg.window_size
    for k, v in state.items():
        if k == "patch_embed.proj.weight" and v.ndim == 4:
            t = model.cfg.patch_size[0]
            v = np.repeat(v[:, :, None], t, axis=2) / t
        elif k.endswith("relative_position_bias_table"):
            rows = (2 * wh - 1) * (2 * ww - 1)
            if v.shape[0] != rows:
                side = int(round(np.sqrt(v.shape[0])))
                grid = v.reshape(side, side, -1)
                v = np.asarray(jax.image.resize(grid, (2 * wh - 1, 2 * ww - 1, v.shape[1]), "bicubic")).reshape(
                    rows, -1
                )
            v = np.tile(v, (2 * wd - 1, 1))
        out[k] = v
    return out


def resnet_keys(model: ResNet, skip: Iterable[str] = ()) -> dict[str, tuple[tuple, Callable]]:
    """{checkpoint key: (our path, converter)} for a torchvision ResNet; `skip` drops top-level names."""
    keys = {"conv1.weight": (("conv1", "kernel"), _conv)}
    keys.update(_norm("bn1", ("bn1",)))
    keys.update({"bn1.running_mean": (("bn1", "mean"), _same), "bn1.running_var": (("bn1", "var"), _same)})
    for i, layer in enumerate(model.layers):
        for j, block in enumerate(layer):
            t, o = f"layer{i + 1}.{j}", ("layers", i, j)
            for n in ("1", "2"):
                keys[f"{t}.conv{n}.weight"] = (o + (f"conv{n}", "kernel"), _conv)
                keys.update(_bn(f"{t}.bn{n}", o + (f"bn{n}",)))
            if block.downsample is not None:
                keys[f"{t}.downsample.0.weight"] = (o + ("downsample", 0, "kernel"), _conv)
                keys.update(_bn(f"{t}.downsample.1", o + ("downsample", 1)))
    if model.fc is not None:
        keys.update(_dense("fc", ("fc",)))
    skip = tuple(skip)
    return {k: v for k, v in keys.items() if k.split(".")[0] not in skip}


def _bn(prefix: str, ours: tuple) -> dict:
    return {
        **_norm(prefix, ours),
        f"{prefix}.running_mean": (ours + ("mean",), _same),
        f"{prefix}.running_var": (ours + ("var",), _same),
    }


def apply(
    module: nnx.Module,
    state: Mapping[str, np.ndarray],
    keys: Mapping[str, tuple[tuple, Callable]],
    *,
    ignore: re.Pattern = _IGNORED,
    allow_unused: Iterable[str] = (),
) -> list[str]:
    """Writes checkpoint entries into `module`'s variables; returns the names it loaded.

    Raises CheckpointMismatch naming every missing key, unexpected key and shape mismatch at once.
    """
    flat = dict(nnx.to_flat_state(nnx.state(module)))
    missing = [k for k in keys if k not in state]
    allowed = tuple(allow_unused)
    unexpected = [k for k in state if k not in keys and not ignore.search(k) and not k.startswith(allowed)]
    bad_shapes, updates = [], {}
    for name, (path, convert) in keys.items():
        if name not in state:
            continue
        if path not in flat:
            raise KeyError(f"internal: {path} is not a variable of {type(module).__name__}")
        value = convert(np.asarray(state[name]))
        target = flat[path]
        if tuple(value.shape) != tuple(target.shape):
            bad_shapes.append(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        updates[path] = value.astype(target.dtype)
    if missing or unexpected or bad_shapes:
        raise CheckpointMismatch(
            "checkpoint does not fit the model:"
            + (f"\n  missing ({len(missing)}): {missing[:20]}" if missing else "")
            + (f"\n  unexpected ({len(unexpected)}): {unexpected[:20]}" if unexpected else "")
            + (f"\n  wrong shape ({len(bad_shapes)}): {bad_shapes[:20]}" if bad_shapes else "")
        )
    for path, value in updates.items():
        flat[path].set_value(value) if hasattr(flat[path], "set_value") else setattr(flat[path], "value", value)
    nnx.update(module, nnx.from_flat_state(flat))
    return sorted(keys)


def load_swin3d(model: SwinTransformer3d, state: Mapping[str, np.ndarray], layout: str | None = None) -> list[str]:
    """Loads a Video Swin backbone from torchvision, mmaction (Video Swin authors) or 2D Swin weights.

    `layout` is detected when None: "features.*" is torchvision, a 4-D patch kernel is 2D Swin (inflated),
    otherwise mmaction.
    """
    state = strip_prefix(state)
    if layout is None:
        if any(k.startswith("features.") for k in state):
            layout = "torchvision"
        elif np.ndim(state.get("patch_embed.proj.weight")) == 4:
            layout = "swin2d"
        else:
            layout = "mmaction"
    if layout == "swin2d":
        state, layout = inflate_swin2d(state, model), "mmaction"
    return apply(model, state, swin3d_keys(model, layout))


def load_resnet(model: ResNet, state: Mapping[str, np.ndarray], skip: Iterable[str] = ("conv1", "fc")) -> list[str]:
    """Loads a torchvision ResNet; by default not the stem (ours has one channel) nor the classifier."""
    state = strip_prefix(state)
    skip = tuple(skip)
    return apply(model, state, resnet_keys(model, skip), allow_unused=tuple(f"{s}." for s in skip))

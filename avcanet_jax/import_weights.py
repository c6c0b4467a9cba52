r"""Builds AV-CANet, fills it from pretrained PyTorch checkpoints, and saves an Orbax checkpoint.

  python -m avcanet_jax.import_weights --swin=swin3d_t.pth --resnet=resnet34.pth --out=/path/pretrained

`--swin` takes torchvision's swin3d_t/s/b state dict, the Video Swin authors' checkpoint or a 2D Swin
(ImageNet-22K Swin-T is inflated to 3D); `--resnet` takes torchvision's ResNet-18/34 (its stem and fc
are not loaded: ours has a one-channel stem). Files may be .pth/.pt (needs torch; read with
weights_only=True), .safetensors or .npz. The output directory is what the trainer's `init_from`
points at: the model's parameters and BatchNorm statistics, plus `imported.json` listing what came from
where. The parts not covered by the checkpoints (fusion, classifier, projections) keep their random
initialisation from `--seed`.
"""

from __future__ import annotations

import json
import os

from flax import nnx

from avcanet_jax import pretrained
from avcanet_jax.avcanet import AVCANet, ModelConfig
from avcanet_jax.cli import UserError

_SAVED = nnx.Any(nnx.Param, nnx.BatchStat)  # What a pretrained checkpoint holds (no RNG or optimizer state).


def import_into(model: AVCANet, swin: str | None = None, resnet: str | None = None, swin_layout: str | None = None):
    """Loads the given checkpoint files into `model`'s backbones; returns {branch: keys loaded}."""
    loaded = {}
    if swin:
        if model.visual is None:
            raise UserError("--swin given, but the model has no visual branch (model.modalities='audio')")
        loaded["visual"] = pretrained.load_swin3d(model.visual.backbone, pretrained.load_state_dict(swin), swin_layout)
    if resnet:
        if model.audio is None:
            raise UserError("--resnet given, but the model has no audio branch (model.modalities='visual')")
        loaded["audio"] = pretrained.load_resnet(model.audio.backbone, pretrained.load_state_dict(resnet))
    return loaded


def save(model: nnx.Module, out_dir: str, manifest: dict) -> str:
    """Writes the model's parameters and batch statistics as an Orbax StandardCheckpoint in out_dir/state."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    state = nnx.state(model, _SAVED)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(out_dir, "state"), state, force=True)
    with open(os.path.join(out_dir, "imported.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
    return out_dir


def restore(model: nnx.Module, out_dir: str) -> None:
    """Reads a checkpoint written by `save` into `model` (same ModelConfig)."""
    import orbax.checkpoint as ocp

    abstract = nnx.state(model, _SAVED)
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(os.path.join(os.path.abspath(out_dir), "state"), abstract)
    nnx.update(model, state)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="avcanet_jax.import_weights", description=__doc__.split("\n")[0])
    parser.add_argument("--swin", help="Video Swin / 2D Swin checkpoint")
    parser.add_argument("--swin_layout", choices=["torchvision", "mmaction", "swin2d"], default=None)
    parser.add_argument("--resnet", help="torchvision ResNet checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--swin_size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--resnet_depth", type=int, default=34, choices=[18, 34])
    parser.add_argument("--num_classes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.swin or args.resnet):
        parser.error("give --swin and/or --resnet")
    for flag, path in (("--swin", args.swin), ("--resnet", args.resnet)):
        if path and not os.path.isfile(path):
            parser.exit(2, f"{parser.prog}: error: {flag}={path}: no such file\n")
    cfg = ModelConfig(num_classes=args.num_classes, swin=args.swin_size, resnet_depth=args.resnet_depth)
    model = AVCANet(cfg, nnx.Rngs(args.seed))
    try:
        loaded = import_into(model, args.swin, args.resnet, args.swin_layout)
    except (UserError, pretrained.CheckpointMismatch, ImportError) as e:  # Wrong file or missing torch.
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    manifest = {
        "model": {"swin": args.swin_size, "resnet_depth": args.resnet_depth, "num_classes": args.num_classes},
        "sources": {"visual": args.swin, "audio": args.resnet},
        "loaded_keys": {k: len(v) for k, v in loaded.items()},
    }
    print(json.dumps({"out": save(model, args.out, manifest), **manifest}))


if __name__ == "__main__":
    main()

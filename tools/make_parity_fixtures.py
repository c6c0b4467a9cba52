r"""Writes parity fixtures: torchvision's outputs for seeded random weights and inputs.

  pip install torch==2.14.1 torchvision==0.29.1   # only for this script; nothing else needs torch
  python tools/make_parity_fixtures.py --seed 0 --out tests/fixtures/parity [--full-size]

For each network (torchvision's `SwinTransformer3d` and `resnet34`) the fixture file holds the input,
torchvision's output in eval mode, the seed and the manifest of state-dict names and shapes from which
`parity_weights.random_state_dict` recreates the weights without torch. The committed fixtures use the
real swin3d_t and resnet34 configurations at a reduced input size; `--full-size` uses the paper's
snippet shape (8 x 112 x 112) instead. The tests read `$AVCANET_PARITY_FIXTURES` when set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_weights import random_state_dict  # noqa: E402


def _load_random(model: torch.nn.Module, seed: int) -> dict[str, list[int]]:
    sd = model.state_dict()
    manifest = {k: list(v.shape) for k, v in sd.items() if v.is_floating_point()}
    weights = random_state_dict({k: tuple(s) for k, s in manifest.items()}, seed)
    model.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v for k, v in sd.items()})
    return manifest


def _save(path: str, model: torch.nn.Module, inputs: np.ndarray, outputs: np.ndarray, seed: int, manifest, config):
    np.savez_compressed(
        path,
        inputs=inputs,
        outputs=outputs,
        seed=np.int64(seed),
        manifest=json.dumps(manifest),
        config=json.dumps(config),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
    )
    print(f"wrote {path}: input {inputs.shape} -> output {outputs.shape}, |out| max {np.abs(outputs).max():.3f}")


def _save_swin(path: str, swin: torch.nn.Module, x: np.ndarray, seed: int, manifest) -> None:
    """The backbone's features (before pooling and head) for input `x` [B, C, T, H, W]."""
    with torch.no_grad():
        feats = swin.norm(swin.features(swin.patch_embed(torch.from_numpy(x))))
    _save(
        path,
        swin,
        x.transpose(0, 2, 3, 4, 1),
        feats.numpy(),
        seed,
        manifest,
        {"model": "swin3d_t", "input_layout": "BTHWC"},
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "parity"))
    parser.add_argument("--full-size", action="store_true", help="the paper's snippet shape, 8 x 112 x 112")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    side = 112 if args.full_size else 56

    swin = torchvision.models.video.swin3d_t().eval()
    manifest_swin = _load_random(swin, args.seed)
    x = rng.uniform(-1, 1, (1, 3, 8, side, side)).astype(np.float32)
    _save_swin(os.path.join(args.out, "swin3d_t.npz"), swin, x, args.seed, manifest_swin)

    resnet = torchvision.models.resnet34().eval()
    manifest = _load_random(resnet, args.seed)
    x = rng.uniform(-1, 1, (2, 3, side * 2, side * 2)).astype(np.float32)
    with torch.no_grad():
        logits = resnet(torch.from_numpy(x))
    _save(
        os.path.join(args.out, "resnet34.npz"),
        resnet,
        x.transpose(0, 2, 3, 1),
        logits.numpy(),
        args.seed,
        manifest,
        {"model": "resnet34", "input_layout": "BHWC"},
    )

    # Maps that windows do not tile: 9 x 9 x 9 tokens in stage 1 (padded to 16 x 14 x 14, shifted by
    # 4, 3, 3), 9 x 5 x 5 in stage 2 (padded in time only), so padding meets shifts and window shrinking.
    x = rng.uniform(-1, 1, (1, 3, 18, 36, 36)).astype(np.float32)
    _save_swin(os.path.join(args.out, "swin3d_t_padded.npz"), swin, x, args.seed, manifest_swin)


if __name__ == "__main__":
    main()

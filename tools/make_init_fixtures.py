r"""Writes how PyTorch initialises each kind of module the authors' AV-CANet trains from scratch, and one
BatchNorm update, for `tests/test_init.py` to compare ours against without torch.

  pip install torch==2.13.0   # only for this script
  python tools/make_init_fixtures.py --out tests/fixtures/init_stats.json

For every entry: the module as the authors' code builds it (PyTorch's defaults, torchvision's ResNet
recipe, `nn.MultiheadAttention`'s own scheme, Swin's trunc_normal), and the standard deviation and
largest magnitude of its weight and bias over several seeds. The BatchNorm entry holds a training batch
and the running mean and variance after one PyTorch update from (0, 1).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn

SEEDS = range(4)


def _stats(tensors: list[torch.Tensor]) -> dict:
    values = torch.cat([t.detach().reshape(-1) for t in tensors]).double()
    return {"std": float(values.std()), "max_abs": float(values.abs().max()), "mean": float(values.mean())}


def _entry(make) -> dict:
    weights, biases = [], []
    for seed in SEEDS:
        torch.manual_seed(seed)
        w, b = make()
        weights.append(w)
        if b is not None:
            biases.append(b)
    out = {"weight": _stats(weights), "weight_shape": list(weights[0].shape)}
    if biases:
        out["bias"] = _stats(biases)
    return out


def _linear(din, dout):
    m = nn.Linear(din, dout)
    return m.weight, m.bias


def _swin_linear(din, dout):  # torchvision's SwinTransformer3d: trunc_normal_(std=0.02), zero bias.
    m = nn.Linear(din, dout)
    nn.init.trunc_normal_(m.weight, std=0.02)
    nn.init.zeros_(m.bias)
    return m.weight, m.bias


def _resnet_conv(cin, cout, kernel):  # torchvision's ResNet recipe.
    m = nn.Conv2d(cin, cout, kernel, bias=False)
    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return m.weight, None


def _mha(part):
    m = nn.MultiheadAttention(512, 8)
    return {
        "in_proj": (m.in_proj_weight, m.in_proj_bias),
        "out_proj": (m.out_proj.weight, m.out_proj.bias),
    }[part]


def _batch_norm_update() -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 3, 5)).astype(np.float32) * 2 + 1  # NCHW: 6 x 3 x 5 values per channel.
    bn = nn.BatchNorm2d(4)
    bn.train()
    y = bn(torch.from_numpy(x))
    return {
        "input_nchw": x.tolist(),
        "running_mean": bn.running_mean.tolist(),
        "running_var": bn.running_var.tolist(),
        "output_nchw": y.detach().numpy().tolist(),
        "momentum": bn.momentum,
    }


ENTRIES = {
    # The authors' nn.Linear layers at the sizes they use (fusion, gates, scores, heads, projections).
    "linear_512_512": lambda: _linear(512, 512),
    "linear_1024_512": lambda: _linear(1024, 512),
    "linear_512_1": lambda: _linear(512, 1),
    "linear_768_512": lambda: _linear(768, 512),
    "linear_1024_6": lambda: _linear(1024, 6),
    "conv1d_512_512_k3": lambda: (lambda m: (m.weight, m.bias))(nn.Conv1d(512, 512, 3, dilation=2, padding=2)),
    "conv1d_512_512_k1": lambda: (lambda m: (m.weight, m.bias))(nn.Conv1d(512, 512, 1)),
    "conv3d_patch_embed": lambda: (lambda m: (m.weight, m.bias))(nn.Conv3d(3, 96, (2, 4, 4), stride=(2, 4, 4))),
    "swin_linear_96_288": lambda: _swin_linear(96, 288),
    "resnet_stem_7x1": lambda: _resnet_conv(1, 64, (7, 1)),
    "resnet_conv_3x3_64": lambda: _resnet_conv(64, 64, (3, 3)),
    "resnet_conv_3x3_256_512": lambda: _resnet_conv(256, 512, (3, 3)),
    "mha_in_proj": lambda: _mha("in_proj"),
    "mha_out_proj": lambda: _mha("out_proj"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/init_stats.json")
    args = parser.parse_args()
    fixture = {"torch": torch.__version__, "seeds": len(SEEDS)}
    fixture["modules"] = {name: _entry(make) for name, make in ENTRIES.items()}
    fixture["batch_norm"] = _batch_norm_update()
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1)
    print(f"wrote {args.out}: {sorted(fixture['modules'])}")


if __name__ == "__main__":
    main()

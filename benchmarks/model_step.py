r"""Model speed: the Video Swin-T branch against torchvision's swin3d_t, and the full model's train step.

  python benchmarks/model_step.py                 # CPU: ours vs torchvision, one clip (16 snippets)
  python benchmarks/model_step.py --full --batch 32 --bf16   # accelerator: full AV-CANet train step, MFU

CPU mode times forward (eval) and forward+backward (train mode, loss = sum of features) of the
backbone on one clip's 16 snippets of 8 x 112 x 112, ours under `jax.jit` and torchvision's in eager
PyTorch with the same thread count, and prints both, their ratio, parameter counts without heads, and
XLA's FLOPs per clip. `--full` times a whole training step (forward, EP-CE over three heads, backward,
AdamW) at the paper's shapes and reports model FLOPs utilisation against `--peak_tflops`.
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avcanet_jax import losses
from avcanet_jax.avcanet import AVCANet, ModelConfig
from avcanet_jax.swin3d import SWIN_SIZES, SwinTransformer3d

EMOTIONS_CLASS_POLARITY = np.array([0, 2, 1, 0, 2, 2], np.int32)  # Excitation..Tension (SPEC §1).


def best_time(fn, repeats: int) -> float:
    fn()  # Compile / warm up.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def flops_of(jitted, *args) -> float:
    """FLOPs (a multiply-add counts 2) of the lowered, backend-independent program.

    The compiled program's cost analysis is not used: on GPU it leaves out the matrix products that
    XLA hands to cuBLAS/cuDNN as custom calls (it reported 27 instead of 204 GFLOPs per clip on an H100).
    """
    cost = jitted.lower(*args).cost_analysis()
    if cost is None:  # Some GPU builds give no lowered analysis; the CPU lowering of the same program does.
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
        cost = jitted.lower(*specs).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def ours_backbone(x: np.ndarray, repeats: int):
    model = SwinTransformer3d(SWIN_SIZES["tiny"], nnx.Rngs(0))
    params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
    xj = jnp.asarray(x)

    @jax.jit
    def forward(params_state, rest, x):
        m = nnx.merge(graphdef, params_state, rest)
        m.eval()
        return m(x)

    @jax.jit
    def fwd_bwd(params_state, rest, x):
        m = nnx.merge(graphdef, params_state, rest)
        m.train()
        return nnx.state(nnx.grad(lambda m: m(x).sum())(m), nnx.Param)

    fwd = best_time(lambda: forward(params_state, rest, xj).block_until_ready(), repeats)
    both = best_time(lambda: jax.block_until_ready(fwd_bwd(params_state, rest, xj)), repeats)
    return fwd, both, params, flops_of(forward, params_state, rest, xj)


def torchvision_backbone(x: np.ndarray, repeats: int, threads: int):
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    torch.set_num_threads(threads)
    model = torchvision.models.video.swin3d_t()
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())

    def features(m, t):
        return m.norm(m.features(m.patch_embed(t)))

    def forward():
        model.eval()
        with torch.no_grad():
            features(model, xt)

    def fwd_bwd():
        model.train()
        model.zero_grad()
        features(model, xt).sum().backward()

    return best_time(forward, repeats), best_time(fwd_bwd, repeats), params


def full_step(batch: int, bf16: bool, remat: bool, repeats: int, peak_tflops: float, attention: str = "xla"):
    cfg = ModelConfig(swin=dataclasses.replace(SWIN_SIZES["tiny"], attention=attention), bfloat16=bf16, remat=remat)
    model = AVCANet(cfg, nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adamw(1.5e-4, weight_decay=0.02), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.integers(0, 255, (batch, 16, 8, 112, 112, 3), dtype=np.uint8))
    audio = jnp.asarray(rng.standard_normal((batch, 16, 256, 32)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, batch))
    polarity = jnp.asarray(EMOTIONS_CLASS_POLARITY)

    @nnx.jit
    def step(model, optimizer, video, audio, labels):
        def loss_fn(model):
            total, _ = losses.total_loss(model(video, audio), labels, class_polarity=polarity)
            return total

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    # Model FLOPs from the reference attention's lowering: a kernel's cost estimate counts its padding.
    reference = AVCANet(dataclasses.replace(cfg, swin=SWIN_SIZES["tiny"]), nnx.Rngs(params=0, dropout=1))
    graphdef, state = nnx.split(reference)
    fwd_flops = flops_of(jax.jit(lambda s, v, a: nnx.merge(graphdef, s)(v, a)["logits"]), state, video, audio)
    step_s = best_time(lambda: jax.block_until_ready(step(model, optimizer, video, audio, labels)), repeats)
    model_flops = 3 * fwd_flops  # Forward + backward (2x forward) model FLOPs, no recompute counted.
    mfu = model_flops / step_s / (peak_tflops * 1e12)
    return step_s, fwd_flops, mfu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="time the full model's training step")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--attention", default="xla", choices=("xla", "dot_product", "pallas"), help="window attention")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")

    if args.full:
        step_s, fwd_flops, mfu = full_step(
            args.batch, args.bf16, args.remat, args.repeats, args.peak_tflops, args.attention
        )
        clips_s = args.batch / step_s
        print(
            f"full AV-CANet train step, batch {args.batch}, bf16={args.bf16}, remat={args.remat}, "
            f"attention={args.attention}: {step_s * 1e3:.1f} ms"
        )
        print(
            f"forward FLOPs per clip (XLA): {fwd_flops / args.batch / 1e9:.1f} G; {clips_s:.0f} clips/s; MFU {mfu:.1%}"
        )
        print(
            json.dumps(
                {
                    "device": device.device_kind,
                    "batch": args.batch,
                    "bf16": args.bf16,
                    "remat": args.remat,
                    "attention": args.attention,
                    "step_ms": round(step_s * 1e3, 2),
                    "clips_per_s": round(clips_s, 1),
                    "gflops_forward_per_clip": round(fwd_flops / args.batch / 1e9, 2),
                    "mfu": round(mfu, 4),
                }
            )
        )
        return

    threads = os.cpu_count() or 1
    x = np.random.default_rng(0).uniform(-1, 1, (16, 8, 112, 112, 3)).astype(np.float32)
    fwd, both, params, flops = ours_backbone(x, args.repeats)
    tv = torchvision_backbone(x, args.repeats, threads)
    print(f"ours (jax.jit):        forward {fwd:.2f} s, forward+backward {both:.2f} s; params {params:,}")
    result = {"fwd_s_ours": round(fwd, 3), "fwd_bwd_s_ours": round(both, 3), "params_ours": params,
              "gflops_forward_per_clip": round(flops / 1e9, 1), "threads": threads}  # fmt: skip
    if tv is not None:
        tv_fwd, tv_both, tv_params = tv
        print(f"torchvision (eager):   forward {tv_fwd:.2f} s, forward+backward {tv_both:.2f} s; params {tv_params:,}")
        print(f"ratio ours/torchvision: forward {fwd / tv_fwd:.2f}, forward+backward {both / tv_both:.2f}")
        result.update(
            fwd_s_torchvision=round(tv_fwd, 3),
            fwd_bwd_s_torchvision=round(tv_both, 3),
            params_torchvision=tv_params,
            fwd_ratio_vs_torchvision=round(fwd / tv_fwd, 3),
            fwd_bwd_ratio_vs_torchvision=round(both / tv_both, 3),
        )
    else:
        print("torchvision not installed: only our figures (pip install torch torchvision to compare)")
    print(f"XLA cost analysis: {flops / 1e9:.1f} GFLOPs forward per clip (reference: ~88)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

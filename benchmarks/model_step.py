r"""Model speed: the Video Swin-T branch against torchvision's swin3d_t, and the full model's train step.

  python benchmarks/model_step.py                 # CPU: ours vs torchvision, one clip (16 snippets)
  python benchmarks/model_step.py --full --batch 32 --bf16 --attention cudnn,xla   # GPU: full AV-CANet
      # train step, MFU, and the Swin-T branch's train step side by side with torchvision's swin3d_t

CPU mode times forward (eval) and forward+backward (train mode, loss = sum of features) of the
backbone on one clip's 16 snippets of 8 x 112 x 112, ours under `jax.jit` and torchvision's in eager
PyTorch with the same thread count, and prints both, their ratio, parameter counts without heads, and
XLA's FLOPs per clip. `--full` times the trainer's own train step (`train_step.make_steps`: forward,
EP-CE over three heads, backward, AdamW, under `jax.jit` with the state donated) at the paper's shapes
for each `--attention` named, and reports model FLOPs utilisation against `--peak_tflops`; then the
Swin-T branch's own train step (a 6-class head on the pooled features, cross-entropy, AdamW) on
batch x `--snippets` snippets, ours (each attention) and, when PyTorch is installed, torchvision's
`swin3d_t` in eager mode and under `torch.compile`, at the same shape and precision (bf16: autocast) on
the same device, with clips/s, MFU and ours/theirs. The last line is a JSON object.

`--trace DIR` writes a `jax.profiler` trace of three full steps per attention to DIR/<attention>; run
under `XLA_FLAGS="--xla_dump_to=DUMP --xla_dump_hlo_as_text"` and
`python -m avcanet_jax.trace_profile DIR/<attention> --hlo_dump DUMP` gives its time per model part.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avcanet_jax import runtime, sharding, train_step
from avcanet_jax.avcanet import AVCANet, ModelConfig
from avcanet_jax.layers import BF16, DEFAULT_RULES, FP32
from avcanet_jax.swin3d import SWIN_SIZES, SwinTransformer3d
from avcanet_jax.window_attention import IMPLEMENTATIONS

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


def reference_train_flops(model: nnx.Module, *inputs: jax.ShapeDtypeStruct) -> float:
    """Model FLOPs of one train step: 3x the forward pass (backward = 2x forward, no recompute counted),
    lowered from an abstract `model` with the reference attention (a kernel's cost estimate counts its
    padding). The same for every attention, so counted once per shape."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, *x: nnx.merge(graphdef, s)(*x))
    return 3 * flops_of(forward, state, *inputs)


def full_train_flops(batch: int, bf16: bool) -> float:
    model = nnx.eval_shape(lambda: AVCANet(ModelConfig(bfloat16=bf16), nnx.Rngs(params=0, dropout=1)))
    video = jax.ShapeDtypeStruct((batch, 16, 8, 112, 112, 3), jnp.uint8)
    audio = jax.ShapeDtypeStruct((batch, 16, 256, 32), jnp.float32)
    return reference_train_flops(model, video, audio)


def full_step(batch: int, bf16: bool, remat: bool, repeats: int, attention: str = "xla", trace=None) -> float:
    """Seconds per train step of the trainer's own step (`train_step.make_steps`: `jax.jit` on the state
    pytree, donated, with the loss, metrics and AdamW)."""
    cfg = ModelConfig(swin=dataclasses.replace(SWIN_SIZES["tiny"], attention=attention), bfloat16=bf16, remat=remat)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    make = train_step.model_and_optimizer(cfg, optax.adamw(1.5e-4, weight_decay=0.02), seed=0)
    graphdef, abstract_state, create = sharding.sharded_state(make, mesh, DEFAULT_RULES)
    shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    spec = train_step.LossSpec("ep_ce", tuple(EMOTIONS_CLASS_POLARITY.tolist()), (0.5, 0.5, 0.5))
    step, _ = train_step.make_steps(graphdef, shardings, batch_sharding, mesh, spec)
    rng = np.random.default_rng(0)
    inputs = {
        "video": rng.integers(0, 255, (batch, 16, 8, 112, 112, 3), dtype=np.uint8),
        "audio": rng.standard_normal((batch, 16, 256, 32)).astype(np.float32),
        "label": rng.integers(0, 6, batch).astype(np.int32),
        "mask": np.ones(batch, bool),
    }
    inputs = jax.device_put(inputs, batch_sharding)
    state = create()

    def run():
        nonlocal state
        state, metrics = step(state, inputs)
        jax.block_until_ready(metrics)

    step_s = best_time(run, repeats)
    if trace:  # Summarise with `python -m avcanet_jax.trace_profile`, or open in TensorBoard / Perfetto.
        with jax.profiler.trace(trace):
            for _ in range(3):
                run()
    return step_s


class SwinClassifier(nnx.Module):
    """The Swin-T branch with a 6-class head on its pooled features, as in the side-by-side step."""

    def __init__(self, cfg, precision, rngs):
        self.swin = SwinTransformer3d(cfg, rngs, precision)
        self.head = nnx.Linear(cfg.num_features, 6, rngs=rngs)

    def __call__(self, x):
        return self.head(self.swin(x).mean(axis=(1, 2, 3)).astype(jnp.float32))


def swin_train_flops(batch: int, snippets: int, bf16: bool) -> float:
    precision = BF16 if bf16 else FP32
    model = nnx.eval_shape(lambda: SwinClassifier(SWIN_SIZES["tiny"], precision, nnx.Rngs(params=0, dropout=1)))
    return reference_train_flops(model, jax.ShapeDtypeStruct((batch * snippets, 8, 112, 112, 3), jnp.float32))


def swin_step_ours(batch: int, snippets: int, bf16: bool, repeats: int, attention: str) -> float:
    """Seconds per train step of our Swin-T branch on [batch * snippets, 8, 112, 112, 3], run as the
    trainer runs its step: `jax.jit` of a pure function of the state pytree, donated."""
    cfg = dataclasses.replace(SWIN_SIZES["tiny"], attention=attention)
    model = SwinClassifier(cfg, BF16 if bf16 else FP32, nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adamw(1.5e-4, weight_decay=0.02), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (batch * snippets, 8, 112, 112, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, batch * snippets))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x, labels):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()

        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    def run():
        nonlocal state
        state, loss = step(state, x, labels)
        jax.block_until_ready(loss)

    return best_time(run, repeats)


def swin_step_torchvision(batch: int, snippets: int, bf16: bool, repeats: int, compiled: bool):
    """Seconds per train step of torchvision's swin3d_t with a 6-class head (same loss and optimizer), or
    None without PyTorch. On the GPU when there is one; eager, or under `torch.compile`."""
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torchvision.models.video.swin3d_t()
    model.head = torch.nn.Linear(model.head.in_features, 6)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, weight_decay=0.02)
    generator = np.random.default_rng(0)
    x = torch.from_numpy(generator.uniform(-1, 1, (batch * snippets, 3, 8, 112, 112)).astype(np.float32)).to(device)
    labels = torch.from_numpy(generator.integers(0, 6, batch * snippets)).to(device)
    forward = torch.compile(model) if compiled else model

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), labels)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # torch.compile compiles on its first steps; `best_time` warms up once more.
    return best_time(step, repeats)


def side_by_side(args, attentions: list[str]) -> dict:
    """Our Swin-T branch's train step (each window attention) against torchvision's, printed and returned
    for the JSON line; ours/theirs is taken for our fastest attention."""
    clips = args.batch
    peak = args.peak_tflops * 1e12
    model_flops = swin_train_flops(args.batch, args.snippets, args.bf16)
    out = {}
    print(f"Swin-T branch train step, {clips} clips x {args.snippets} snippets, bf16={args.bf16}:")
    ours = {}  # attention -> seconds, for those that ran.
    for attention in attentions:
        try:
            seconds = swin_step_ours(args.batch, args.snippets, args.bf16, args.repeats, attention)
        except Exception as e:  # noqa: BLE001 - an implementation this backend lacks; report and go on.
            print(f"  ours ({attention}): failed: {str(e)[:300]}")
            continue
        ours[attention] = seconds
        suffix = "" if attention == attentions[0] else f"_{attention}"
        out.update({f"swin_step_ms_ours{suffix}": round(seconds * 1e3, 2),
                    f"swin_clips_per_s_ours{suffix}": round(clips / seconds, 1),
                    f"swin_mfu_ours{suffix}": round(model_flops / seconds / peak, 4)})  # fmt: skip
        print(f"  ours ({attention}): {seconds * 1e3:.1f} ms, {clips / seconds:.1f} clips/s, "
              f"MFU {model_flops / seconds / peak:.1%}")  # fmt: skip
    if not ours:
        return out
    best = min(ours, key=ours.get)
    ours_s = ours[best]
    out["swin_best_attention"] = best
    for name, compiled in (("eager", False), ("torch.compile", True)):
        theirs = None
        if not args.no_torchvision:
            try:
                theirs = swin_step_torchvision(args.batch, args.snippets, args.bf16, args.repeats, compiled)
            except RuntimeError as e:  # Out of memory, or a torch.compile failure: still report the rest.
                print(f"  torchvision swin3d_t, {name}: failed: {str(e)[:300]}")
                continue
        if theirs is None:
            print("  torchvision: not run (pip install torch torchvision to compare)")
            break
        key = "compiled" if compiled else "eager"
        out.update({f"swin_step_ms_torchvision_{key}": round(theirs * 1e3, 2),
                    f"swin_mfu_torchvision_{key}": round(model_flops / theirs / peak, 4),
                    f"swin_speedup_vs_torchvision_{key}": round(theirs / ours_s, 3)})  # fmt: skip
        print(f"  torchvision swin3d_t, {name}: {theirs * 1e3:.1f} ms, {clips / theirs:.1f} clips/s, "
              f"MFU {model_flops / theirs / peak:.1%}; ours ({best}) at {theirs / ours_s:.2f}x its speed")  # fmt: skip
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="time the full model's training step")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument(
        "--attention", default="xla", help=f"window attention, or several comma-separated: {', '.join(IMPLEMENTATIONS)}"
    )
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--snippets", type=int, default=16, help="snippets per clip in the side-by-side step")
    parser.add_argument("--no_torchvision", action="store_true", help="skip torchvision in --full")
    parser.add_argument(
        "--trace", default=None, help="--full: write jax.profiler traces of our step under DIR/<attention>"
    )
    args = parser.parse_args()
    attentions = args.attention.split(",")
    if unknown := [a for a in attentions if a not in IMPLEMENTATIONS]:
        parser.error(f"--attention: {unknown} not among {IMPLEMENTATIONS}")
    # Without TPU chips, keep JAX off libtpu (installed by the test extra): its profiler plugin crashes
    # `jax.profiler.trace` on other machines ("Unexpected PLUGIN_Profiler_Api size").
    runtime.leave_out_absent_tpus()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")

    if args.full:
        result = {"device": device.device_kind, "batch": args.batch, "bf16": args.bf16, "remat": args.remat}
        model_flops = full_train_flops(args.batch, args.bf16)
        for attention in attentions:
            trace = os.path.join(args.trace, attention) if args.trace else None
            try:
                step_s = full_step(args.batch, args.bf16, args.remat, args.repeats, attention, trace)
            except Exception as e:  # noqa: BLE001 - an implementation this backend lacks; report and go on.
                print(f"full AV-CANet train step, attention={attention}: failed: {str(e)[:300]}")
                continue
            clips_s, mfu = args.batch / step_s, model_flops / step_s / (args.peak_tflops * 1e12)
            print(
                f"full AV-CANet train step, batch {args.batch}, bf16={args.bf16}, remat={args.remat}, "
                f"attention={attention}: {step_s * 1e3:.1f} ms; {clips_s:.0f} clips/s; MFU {mfu:.1%}"
            )
            suffix = "" if attention == attentions[0] else f"_{attention}"
            result.update({f"step_ms{suffix}": round(step_s * 1e3, 2), f"clips_per_s{suffix}": round(clips_s, 1),
                           f"mfu{suffix}": round(mfu, 4)})  # fmt: skip
        forward_per_clip = model_flops / 3 / args.batch / 1e9
        print(f"forward FLOPs per clip (XLA, reference attention): {forward_per_clip:.1f} G")
        result.update(attention=args.attention, gflops_forward_per_clip=round(forward_per_clip, 2))
        result.update(side_by_side(args, attentions))
        print(json.dumps(result))
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

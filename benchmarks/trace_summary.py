r"""Where a traced step's device time goes: `jax.profiler` trace -> per-part and top-kernel tables.

  python benchmarks/trace_summary.py TRACE_DIR [--hlo_dump XLA_DUMP_DIR] [--steps 3]

Reads the `.xplane.pb` that `jax.profiler.trace` (or `benchmarks/model_step.py --trace`) wrote, keeps
the accelerator's planes (`/device:GPU:0`, `/device:TPU:0`, ...; the host's when there is none) and
sums each kernel's time. With `--hlo_dump` (a folder written under
`XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`), each kernel's HLO instruction is looked up in the
optimised module to find its `op_name`, whose `jax.named_scope` path puts it in the same parts as
`python -m avcanet_jax.aot --profile` (Swin stage and attention / MLP / norm, audio, fusion, loss,
optimizer); the parts add up to the kernels' total. Times are per step (`--steps`: the steps traced).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re

from avcanet_jax import step_profile

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", re.M)


def op_names(dump_dir: str) -> dict[tuple[int, str], str]:
    """(module id, HLO instruction name) -> its `op_name` (the jax.named_scope path), from the optimised
    modules; the dump's `module_0042.` prefix is the id a trace's events give as `program_id`."""
    names = {}
    for path in glob.glob(os.path.join(dump_dir, "module_*after_optimizations.txt")):
        module = int(re.match(r"module_(\d+)", os.path.basename(path)).group(1))
        with open(path) as f:
            names.update({(module, name): op for name, op in _INSTRUCTION.findall(f.read())})
    return names


def kernel_times(trace_dir: str) -> tuple[str, dict[tuple[str, str], list]]:
    """The accelerator planes' names and {(line, kernel or op name): [count, total ns, (program id, hlo_op)]}."""
    from jax.profiler import ProfileData

    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise SystemExit(f"no .xplane.pb under {trace_dir}")
    data = ProfileData.from_file(paths[-1])
    planes = [p for p in data.planes if p.name.startswith("/device:")] or [
        p for p in data.planes if p.name == "/host:CPU"
    ]
    times: dict[tuple[str, str], list] = {}
    for plane in planes:
        for line in plane.lines:
            for event in line.events:
                stats = {key: value for key, value in event.stats}
                if "hlo_op" not in stats:  # Host-side bookkeeping, not device work.
                    continue
                op = (int(stats.get("program_id", -1)), stats["hlo_op"])
                entry = times.setdefault((line.name, event.name), [0, 0.0, op])
                entry[0] += 1
                entry[1] += event.duration_ns
    return ", ".join(p.name for p in planes), times


def _library_part(kernel: str) -> str:
    """A row for a kernel with no HLO instruction to name its scope."""
    k = kernel.lower()
    if "fmha" in k or "sdpa" in k or "matmul_dq" in k or "dot_do_o" in k:
        return "(cuDNN attention)"
    if "conv" in k or "nchw" in k or "nhwc" in k:
        return "(cuDNN convolution)"
    if "gemm" in k or "nvjet" in k or "cublas" in k:
        return "(library matmul)"
    return "(no op_name)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace_dir")
    parser.add_argument("--hlo_dump", default=None, help="XLA dump folder of the traced program")
    parser.add_argument("--steps", type=int, default=3, help="steps the trace holds")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    plane, times = kernel_times(args.trace_dir)
    names = op_names(args.hlo_dump) if args.hlo_dump else {}
    # Kernels run on stream lines; "XLA Ops"/"XLA Modules" lines repeat the same time one level up.
    lines = collections.Counter()
    for (line, _), (_, ns, _) in times.items():
        lines[line] += ns
    kernel_lines = [ln for ln in lines if ln not in ("XLA Ops", "XLA Modules", "Steps", "Framework Ops")]
    total = sum(lines[ln] for ln in kernel_lines) / args.steps / 1e6
    per_line = ", ".join(f"{ln} {ns / args.steps / 1e6:.1f}" for ln, ns in lines.items())
    print(f"plane {plane}; lines (ms per step): {per_line}")
    print(f"kernel time per step: {total:.1f} ms over {len(kernel_lines)} line(s)")
    parts = collections.Counter()
    kernels = collections.Counter()
    for (line, name), (_, ns, hlo_op) in times.items():
        if line not in kernel_lines:
            continue
        # A kernel XLA generated is named for its fusion; inside a CUDA-graph command buffer that name is
        # the only link to the HLO. cuDNN/cuBLAS kernels there are known by their library's name only.
        op_name = names.get(hlo_op, "") or names.get((hlo_op[0], name), "")
        hlo_op = hlo_op[1]
        parts[step_profile.part_of(op_name, "") if op_name else _library_part(name)] += ns
        kernels[(name, hlo_op, op_name)] += ns
    print(f"\n{'part':<28} {'ms/step':>8} {'share':>6}")
    for part, ns in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"{part:<28} {ns / args.steps / 1e6:8.2f} {ns / args.steps / 1e6 / total:6.1%}")
    print(f"{'total':<28} {total:8.2f}")
    print(f"\ntop {args.top} kernels (ms/step, share, kernel, hlo_op, op_name):")
    for (name, hlo_op, op_name), ns in kernels.most_common(args.top):
        ms = ns / args.steps / 1e6
        print(f"{ms:8.2f} {ms / total:6.1%}  {name[:60]}  {hlo_op}  {op_name[-110:]}")


if __name__ == "__main__":
    main()

r"""Where a traced step's device time goes: `jax.profiler` trace -> per-part and top-kernel tables.

  XLA_FLAGS="--xla_dump_to=DUMP --xla_dump_hlo_as_text" python benchmarks/model_step.py --full --trace TRACE
  python -m avcanet_jax.trace_profile TRACE/xla [--hlo_dump DUMP] [--steps 3]

The measured counterpart of `python -m avcanet_jax.aot --profile` (the TPU compiler's estimate).
Reads the `.xplane.pb` that `jax.profiler.trace` (or `benchmarks/model_step.py --trace`) wrote, keeps
the accelerator's planes (`/device:GPU:0`, `/device:TPU:0`, ...; the host's when there is none) and
sums each kernel's time. With `--hlo_dump` (a folder written under
`XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`), each kernel's HLO instruction is looked up in the
optimised module to find its `op_name`, whose `jax.named_scope` path puts it in the same parts as
`python -m avcanet_jax.aot --profile` (Swin stage and attention / MLP / norm, audio, fusion, loss,
optimizer); the parts add up to the kernels' total. A cuDNN or cuBLAS kernel inside a CUDA-graph command
buffer has no HLO name to look up and gets a row of its library's. Times are per step (`--steps`: the
steps traced).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re

from avcanet_jax import step_profile

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", re.M)


def _kernel_name(instruction: str) -> str:
    """GPU kernels are named for their HLO instruction with '.' made '_' (`loop_add_fusion.11` ->
    `loop_add_fusion_11`); both sides of a lookup are spelt so."""
    return instruction.replace(".", "_")


def op_names(dump_dir: str) -> dict[tuple[int, str], str]:
    """(module id, HLO instruction name) -> its `op_name` (the jax.named_scope path), from the optimised
    modules; the dump's `module_0042.` prefix is the id a trace's events give as `program_id`."""
    names = {}
    for path in glob.glob(os.path.join(dump_dir, "module_*after_optimizations.txt")):
        module = int(re.match(r"module_(\d+)", os.path.basename(path)).group(1))
        with open(path) as f:
            names.update({(module, _kernel_name(name)): op for name, op in _INSTRUCTION.findall(f.read())})
    return names


def kernel_times(trace_dir: str) -> tuple[str, collections.Counter]:
    """The accelerator planes' names and the total ns per (line, kernel name, program id, hlo_op)."""
    from jax.profiler import ProfileData

    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no .xplane.pb under {trace_dir}: is it the folder jax.profiler.trace wrote?")
    data = ProfileData.from_file(paths[-1])
    planes = [p for p in data.planes if p.name.startswith("/device:")] or [
        p for p in data.planes if p.name == "/host:CPU"
    ]
    times = collections.Counter()
    for plane in planes:
        for line in plane.lines:
            for event in line.events:
                stats = {key: value for key, value in event.stats}
                if "hlo_op" in stats:  # Else host-side bookkeeping, not device work.
                    program = int(stats.get("program_id", -1))
                    times[(line.name, event.name, program, _kernel_name(stats["hlo_op"]))] += event.duration_ns
    return ", ".join(p.name for p in planes), times


def _library_part(kernel: str) -> str:
    """A row for a kernel with no HLO instruction to name its scope: XLA's own (fusions, named for
    their instruction) stay unnamed; cuDNN's and cuBLAS's are told apart by their kernel names."""
    k = kernel.lower()
    if re.search(r"(^|_)fusion(_|$)", k) or k.startswith(("loop_", "input_", "wrapped_", "ynn_")):
        return "(no op_name)"
    if any(s in k for s in ("fmha", "sdpa", "matmul_dq", "dot_do_o")):
        return "(cuDNN attention)"
    if any(s in k for s in ("implicit_gemm", "convolve", "nchwtonhwc", "nhwctonchw", "conv2d", "conv3d")):
        return "(cuDNN convolution)"
    if any(s in k for s in ("gemm", "nvjet", "cublas", "cutlass")):
        return "(library matmul)"
    return "(no op_name)"


def summarize(trace_dir: str, hlo_dump: str | None = None, steps: int = 3) -> dict:
    """{"planes", "lines": {line: ms/step}, "total_ms", "parts": {part: ms/step}, "kernels": [(ms/step,
    kernel, hlo_op, op_name)] by time}. Kernels run on stream lines; "XLA Ops"/"XLA Modules" lines (where
    a backend has them) repeat the same time one level up and are left out of the total."""
    planes, times = kernel_times(trace_dir)
    names = op_names(hlo_dump) if hlo_dump else {}
    lines = collections.Counter()
    for (line, *_), ns in times.items():
        lines[line] += ns / steps / 1e6
    kernel_lines = [ln for ln in lines if ln not in ("XLA Ops", "XLA Modules", "Steps", "Framework Ops")]
    parts = collections.Counter()
    kernels = collections.Counter()
    for (line, name, program, hlo_op), ns in times.items():
        if line not in kernel_lines:
            continue
        # A kernel XLA generated is named for its fusion; inside a CUDA-graph command buffer that name is
        # the only link to the HLO. cuDNN/cuBLAS kernels there are known by their library's name only.
        op_name = names.get((program, hlo_op), "") or names.get((program, _kernel_name(name)), "")
        parts[step_profile.part_of(op_name, "") if op_name else _library_part(name)] += ns / steps / 1e6
        kernels[(name, hlo_op, op_name)] += ns / steps / 1e6
    return {
        "planes": planes,
        "lines": dict(lines),
        "total_ms": sum(lines[ln] for ln in kernel_lines),
        "parts": dict(parts.most_common()),
        "kernels": [(ms, *key) for key, ms in kernels.most_common()],
    }


def format_report(summary: dict, top: int = 25) -> str:
    total = summary["total_ms"]
    per_line = ", ".join(f"{ln} {ms:.1f}" for ln, ms in summary["lines"].items())
    out = [f"planes {summary['planes']}; lines (ms per step): {per_line}", f"kernel time per step: {total:.1f} ms"]
    out += ["", f"{'part':<28} {'ms/step':>8} {'share':>6}"]
    out += [f"{part:<28} {ms:8.2f} {ms / total:6.1%}" for part, ms in summary["parts"].items()]
    out += [f"{'total':<28} {total:8.2f}", "", f"top {top} kernels (ms/step, share, kernel, hlo_op, op_name):"]
    for ms, name, hlo_op, op_name in summary["kernels"][:top]:
        out.append(f"{ms:8.2f} {ms / total:6.1%}  {name[:60]}  {hlo_op}  {op_name[-110:]}")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace_dir")
    parser.add_argument("--hlo_dump", default=None, help="XLA dump folder of the traced program")
    parser.add_argument("--steps", type=int, default=3, help="steps the trace holds")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(format_report(summarize(args.trace_dir, args.hlo_dump, args.steps), args.top))


if __name__ == "__main__":
    main()

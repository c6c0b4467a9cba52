"""Where a compiled TPU step spends its HBM traffic and cycles, per part of the model, from the HLO alone.

XLA's TPU compiler writes its own cost model into the optimized HLO: every top-level instruction of the
entry computation (fusions, copies, convolutions) carries `estimated_cycles` in its backend config, and
every shape carries its tiled layout (`T(8,128)`) and memory space (`S(1)` is on-chip VMEM). So the
compiled program that `avcanet_jax.aot` builds on a CPU machine already says, op by op, how long the chip
would take and how many bytes it would move through HBM, without a TPU.

Parts come from the `jax.named_scope`s the modules open (`visual/swin/stage1/block0/attention`, `audio`,
`local_fusion`, `loss`, `optimizer`, ...), which XLA keeps in each instruction's `op_name`, also in the
backward pass (`transpose(jvp(...))`). Every instruction lands in exactly one part, so the parts add up
to the totals.

Bytes are counted as the chip lays them out: each HBM operand read and each HBM result written, padded to
its tiles (a [.., 196, 32] bfloat16 array occupies 128 lanes per row, 4x its logical size). Asynchronous
copies count their read at the start and their write at the end; values in VMEM or SMEM cost no HBM bytes.
XLA's own `bytes accessed` (logical, unpadded) is reported beside it.

Collectives get no cycles either: their time depends on the interconnect and on what overlaps them.
`interconnect` counts instead the bytes each device sends per step, by collective kind, so that a layout
which trades HBM traffic for interconnect traffic (ZeRO, FSDP) shows both sides.

Custom kernels (Pallas/Mosaic `tpu_custom_call`s) get no `estimated_cycles` from the compiler. Their time
is modelled from the `pl.CostEstimate` each kernel carries, as a roofline on the chip's peak FLOP/s and
HBM bandwidth, and the summary says how many of its cycles were modelled that way (`kernel_cycles`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
    "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
NO_TRAFFIC = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id")
SWIN_KINDS = ("attention", "mlp", "norm", "relayout")  # In a stage; anything else there is "residual".
TOP_SCOPES = ("audio", "local_fusion", "global_fusion", "classifier", "loss", "optimizer")

_LEAF = re.compile(r"(\w+)\[([\d,]*)\](?:\{([^}]*)\})?")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_KERNEL_COST = re.compile(r'"cost_estimate":\{"flops":"(\d+)","transcendentals":"\d+","bytes_accessed":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Op:
    """One top-level instruction of the entry computation."""

    name: str
    opcode: str
    shape: str
    op_name: str
    cycles: int
    hbm_bytes: int
    part: str
    backward: bool
    kernel: bool = False  # Cycles modelled from a custom kernel's cost estimate.


@dataclasses.dataclass(frozen=True)
class Roofline:
    """What turns a kernel's cost estimate into cycles: the chip's clock, peak FLOP/s and HBM bandwidth."""

    clock_hz: float
    peak_flops: float
    hbm_bandwidth: float

    def cycles(self, flops: float, nbytes: float) -> int:
        return int(self.clock_hz * max(flops / self.peak_flops, nbytes / self.hbm_bandwidth))


def leaf_bytes(shape: str, hbm_only: bool = True) -> int:
    """Bytes of every array in an HLO shape string, padded to its layout's first tile.

    `hbm_only` skips arrays placed in another memory space (`S(n)`, n > 0: VMEM, SMEM, ...).
    """
    total = 0
    for dtype, dims, layout in _LEAF.findall(shape):
        if dtype not in DTYPE_BYTES:
            continue  # token[] and the like.
        dims = [int(d) for d in dims.split(",") if d]
        space = re.search(r"S\((\d+)\)", layout or "")
        if hbm_only and space and space.group(1) != "0":
            continue
        minor_to_major, _, tiling = (layout or "").partition(":")
        order = [int(i) for i in minor_to_major.split(",") if i.strip()] or list(range(len(dims)))[::-1]
        physical = [dims[i] for i in reversed(order)] if len(order) == len(dims) else dims
        tile = re.match(r"T\(([\d,]+)\)", tiling)
        if tile and physical:
            tile_dims = [int(t) for t in tile.group(1).split(",")]
            for k, t in enumerate(reversed(tile_dims)):
                if k < len(physical):
                    physical[-1 - k] = -(-physical[-1 - k] // t) * t
        total += math.prod(physical) * DTYPE_BYTES[dtype]
    return int(total)


def logical_bytes(shape: str) -> int:
    """Bytes of every non-scalar array in an HLO shape string as its dimensions say, without tile padding."""
    total = 0
    for dtype, dims, _ in _LEAF.findall(shape):
        if dtype in DTYPE_BYTES and dims:
            total += math.prod(int(d) for d in dims.split(",")) * DTYPE_BYTES[dtype]
    return int(total)


# Bytes each device sends per byte of a collective's payload (the arrays it produces; for a reduce-scatter,
# its share), as ring and bidirectional-ring algorithms move them over a group of n devices.
_SENT_PER_BYTE = {
    "all-reduce": lambda n: 2 * (n - 1) / n,
    "all-gather": lambda n: (n - 1) / n,
    "reduce-scatter": lambda n: n - 1,
    "all-to-all": lambda n: (n - 1) / n,
    "collective-permute": lambda n: 1.0,
}
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = ")


def _instruction(line: str) -> tuple[str, str, str, str] | None:
    """(name, result shape, opcode, the text from the opcode on) of an HLO instruction line, else None."""
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    rest = line[m.end() :]
    end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    return m.group(1), shape, rest[: rest.index("(")], rest


def _group_size(line: str, devices: int) -> int:
    """The size of a collective's replica groups, in any of the three ways HLO prints them."""
    if m := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line):
        sizes = {a: int(n) for a, n in re.findall(r"'(\w+)'=(\d+)", m.group(1))}
        return math.prod(sizes[a] for a in re.findall(r"'(\w+)'", m.group(2)))
    if m := re.search(r"replica_groups=\{\{([\d,]*)\}", line):
        return len(m.group(1).split(","))
    if m := re.search(r"replica_groups=\[([\d,]+)\]<=", line):
        return int(m.group(1).split(",")[-1])
    return devices


def interconnect(hlo_text: str, devices: int) -> dict[str, int]:
    """Bytes each device sends over the chips' interconnect per step, by collective kind (`total` too).

    Every collective instruction of the module counts once, wherever the compiler put it (the entry, or
    an asynchronous collective fusion). Its payload is what it produces; an asynchronous start's result
    holds its operands before its outputs, so only the second half counts (a collective-permute's start,
    (operand, output, context...), counts its operand). Groups without printed replica groups span
    `devices`.
    """
    sent: dict[str, float] = defaultdict(float)
    for line in hlo_text.splitlines():
        _, shape, opcode, _ = _instruction(line) or ("", "", "", "")
        kind = opcode.removesuffix("-start")
        if kind not in _SENT_PER_BYTE:
            continue
        arrays = [leaf for leaf in _LEAF.finditer(shape) if leaf.group(2)]
        if opcode.endswith("-start"):
            arrays = arrays[:1] if kind == "collective-permute" else arrays[len(arrays) // 2 :]
        payload = sum(logical_bytes(a.group(0)) for a in arrays)
        sent[kind] += payload * _SENT_PER_BYTE[kind](_group_size(line, devices))
    result = {k: int(v) for k, v in sorted(sent.items())}
    result["total"] = sum(result.values())
    return result


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis group opening at `text[start]`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def scope_path(op_name: str) -> list[str]:
    """`jit(train)/transpose(jvp(visual))/swin/stage1` -> ["visual", "swin", "stage1"]."""
    tokens = [re.sub(r"^(?:[\w.]+\()+", "", t).rstrip(")") for t in op_name.split("/")[1:]]
    return [t for t in tokens if t]


def part_of(op_name: str, opcode: str) -> str:
    """The table row an instruction belongs to (see module docstring)."""
    if opcode.removesuffix("-start").removesuffix("-done") in COLLECTIVES:
        return "collectives"
    path = scope_path(op_name)
    if "swin" in path:
        rest = path[path.index("swin") + 1 :]
        if rest and rest[0].startswith("stage"):
            stage = rest[0]
            if len(rest) > 1 and rest[1] == "merge":
                return f"swin.{stage}.merge"
            kind = next((k for k in rest[1:] if k in SWIN_KINDS), "residual")
            return f"swin.{stage}.{kind}"
        if rest and rest[0] == "patch_embed":
            return "swin.patch_embed"
        return "swin.other"
    if "visual" in path:
        return "visual.head"
    return next((s for s in path if s in TOP_SCOPES), "other")


def parse_entry(hlo_text: str, roofline: Roofline | None = None) -> list[Op]:
    """The entry computation's instructions with their cycles, HBM bytes and part (`roofline`: how to
    cost custom kernels, which the compiler leaves without cycles; without it they count 0 cycles)."""
    entry = re.search(r"^ENTRY [^\n]*\{\n(.*?)^\}", hlo_text, re.S | re.M)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    rows = []  # (name, opcode, shape, operands, op_name, cycles, kernel)
    for line in entry.group(1).splitlines():
        instruction = _instruction(line)
        if instruction is None:
            continue
        name, shape, opcode, rest = instruction
        operands = re.findall(r"%([\w.\-]+)", rest[len(opcode) : _balanced(rest, len(opcode))])
        cycles, op_name, kernel = _CYCLES.search(line), _OP_NAME.search(line), _KERNEL_COST.search(line)
        if cycles:
            cycles = int(cycles.group(1))
        elif kernel and roofline:
            cycles = roofline.cycles(float(kernel.group(1)), float(kernel.group(2)))
        rows.append((name, opcode, shape, operands, op_name.group(1) if op_name else "", cycles or 0,
                     bool(kernel and cycles)))  # fmt: skip
    by_name = {r[0]: r for r in rows}
    consumers = defaultdict(list)
    for r in rows:
        for o in r[3]:
            consumers[o].append(r[0])

    def named(name: str, forward: bool, depth: int = 0) -> str:
        """The op_name of the nearest named instruction after (forward) or before `name`."""
        r = by_name.get(name)
        if r is None or depth > 8:
            return ""
        if r[4] and r[1] not in NO_TRAFFIC:
            return r[4]
        for nxt in consumers[name] if forward else r[3]:
            found = named(nxt, forward, depth + 1)
            if found:
                return found
        return ""

    ops = []
    for name, opcode, shape, operands, op_name, cycles, kernel in rows:
        if opcode in NO_TRAFFIC:
            hbm = 0
        elif opcode.endswith("-done"):
            hbm = leaf_bytes(shape)  # The write; the read was counted at the start.
        elif opcode == "slice-start":  # Reads only the slice: ((source), slice, context).
            inner = shape[1 : _balanced(shape, 1)]
            sliced = _LEAF.search(shape, len(inner) + 1).group(0)
            hbm = leaf_bytes(sliced, hbm_only=False) if leaf_bytes(inner) else 0
        else:
            hbm = sum(leaf_bytes(by_name[o][2]) for o in operands if o in by_name)
            hbm += 0 if opcode.endswith("-start") else leaf_bytes(shape)
        if not op_name and opcode.endswith("-start"):  # A prefetch belongs to what reads it.
            op_name = named(name, forward=True)
        elif not op_name and opcode.endswith("-done"):  # An eviction belongs to what wrote it.
            op_name = named(name, forward=False)
        backward = "transpose(" in op_name
        ops.append(Op(name, opcode, shape, op_name, cycles, hbm, part_of(op_name, opcode), backward, kernel))
    return ops


def summarize(ops: list[Op], clock_hz: float, top: int = 15) -> dict:
    """Per-part totals (forward and backward bytes, cycles, milliseconds, shares) and the top instructions."""
    parts: dict[str, dict] = defaultdict(lambda: {"fwd_bytes": 0, "bwd_bytes": 0, "cycles": 0, "ops": 0})
    for op in ops:
        row = parts[op.part]
        row["bwd_bytes" if op.backward else "fwd_bytes"] += op.hbm_bytes
        row["cycles"] += op.cycles
        row["ops"] += 1
    total_bytes = sum(op.hbm_bytes for op in ops)
    total_cycles = sum(op.cycles for op in ops)
    table = []
    for name, row in sorted(parts.items(), key=lambda kv: _part_order(kv[0])):
        nbytes = row["fwd_bytes"] + row["bwd_bytes"]
        table.append({
            "part": name, **row, "bytes": nbytes, "ms": 1e3 * row["cycles"] / clock_hz,
            "bytes_share": nbytes / total_bytes if total_bytes else 0.0,
            "cycles_share": row["cycles"] / total_cycles if total_cycles else 0.0,
        })  # fmt: skip

    def brief(op: Op) -> dict:
        return {
            "name": op.name, "opcode": op.opcode, "part": op.part, "backward": op.backward,
            "shape": op.shape if len(op.shape) < 120 else op.shape[:117] + "...",
            "hbm_bytes": op.hbm_bytes, "cycles": op.cycles, "op_name": op.op_name,
        }  # fmt: skip

    return {
        "hbm_bytes": total_bytes,
        "cycles": total_cycles,
        "estimated_ms": 1e3 * total_cycles / clock_hz,
        "kernel_cycles": sum(op.cycles for op in ops if op.kernel),
        "parts": table,
        "top_by_bytes": [brief(op) for op in sorted(ops, key=lambda o: -o.hbm_bytes)[:top]],
        "top_by_cycles": [brief(op) for op in sorted(ops, key=lambda o: -o.cycles)[:top]],
    }


def _part_order(name: str) -> tuple:
    order = ["swin.patch_embed", "swin.stage", "swin.other", "visual.head", *TOP_SCOPES, "collectives", "other"]
    return (next(i for i, p in enumerate(order) if name.startswith(p) or p == "other"), name)


def format_report(summary: dict) -> str:
    """The per-part table and the top instructions as plain text (what `aot --profile` prints)."""
    lines = [
        f"{'part':<24}{'fwd MB':>10}{'bwd MB':>10}{'bytes %':>9}{'Mcycles':>10}{'ms':>8}{'cycles %':>10}{'ops':>6}"
    ]
    for r in summary["parts"]:
        lines.append(
            f"{r['part']:<24}{r['fwd_bytes'] / 1e6:>10.1f}{r['bwd_bytes'] / 1e6:>10.1f}{100 * r['bytes_share']:>8.1f}%"
            f"{r['cycles'] / 1e6:>10.2f}{r['ms']:>8.2f}{100 * r['cycles_share']:>9.1f}%{r['ops']:>6}"
        )
    lines.append(
        f"{'total':<24}{summary['hbm_bytes'] / 1e6:>20.1f}{100.0:>8.1f}%{summary['cycles'] / 1e6:>10.2f}"
        f"{summary['estimated_ms']:>8.2f}{100.0:>9.1f}%"
    )
    if "interconnect" in summary:
        kinds = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in summary["interconnect"].items() if k != "total")
        line = (
            f"interconnect, not in the cycles: {summary['interconnect']['total'] / 1e6:.1f} MB sent per device"
            f" per step ({kinds or 'no collectives'})"
        )
        if "interconnect_min_ms" in summary:
            line += (
                f"; at least {summary['interconnect_min_ms']:.2f} ms at the chip's"
                f" {summary['interconnect_ici_bytes_per_s'] / 1e9:.0f} GB/s bidirectional ICI where it does not"
                " overlap compute"
            )
        lines.append(line)
    for key, unit in (("top_by_bytes", "hbm_bytes"), ("top_by_cycles", "cycles")):
        lines.append(f"\ntop instructions by {unit}:")
        for op in summary[key]:
            where = ("bwd " if op["backward"] else "fwd ") + op["part"]
            lines.append(
                f"  {op['hbm_bytes'] / 1e6:9.1f} MB {op['cycles'] / 1e3:9.1f} kcyc  {where:<28} {op['opcode']:<10}"
                f" {op['shape']}  [{op['name']}]"
            )
    return "\n".join(lines)

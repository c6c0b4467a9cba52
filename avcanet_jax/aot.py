r"""Compile the real train step for a TPU slice on this machine, and say whether it fits and how fast.

  pip install -e ".[tpu]"   # libtpu: XLA's TPU compiler, usable without a TPU
  python -m avcanet_jax.aot --config=configs/base.py --topology=v5e:4x4 [--config.batch_size=256 ...]

Builds the config's mesh over the topology's devices, the sharded abstract train state and a batch of
abstract arrays, and compiles the same jitted step `train.py` runs (`train_step.make_steps`) with XLA's
TPU compiler. Prints the per-chip memory XLA allocates (arguments, outputs, temporaries; donated state
counted once), the FLOPs per step, and a roofline step time from XLA's cost analysis and the chip's peak
figures. Exits 1 with a message when the step does not fit the chip's HBM. The last line is JSON.

`--profile` adds where the step's time and HBM traffic go, per part of the model (Swin stages and their
attention / MLP / norms, audio, fusion, loss, optimizer, collectives) and per instruction, from the TPU
compiler's own cost model in the compiled HLO (`avcanet_jax.step_profile`); `--hlo_out=F` keeps that HLO.
"""

from __future__ import annotations

import json
import math
import os
import sys

# Compiling ahead of time never runs on a chip, so another process's hold on libtpu must not stop it,
# and there are no TPU workers for libtpu to look up (without these it prints a page of warnings).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_WORKER_ID", "0")

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from avcanet_jax import cli, config_checks, datasets, input_pipeline, sharding, step_profile, train_step
from avcanet_jax.layers import DEFAULT_RULES

GIB = 2**30

# Per chip: HBM, peak bf16 matrix FLOP/s, HBM bandwidth (Google Cloud TPU documentation).
CHIPS = {
    "TPU v4": (32 * GIB, 275e12, 1.2e12),
    "TPU v5 lite": (16 * GIB, 197e12, 0.819e12),
    "TPU v5": (95 * GIB, 459e12, 2.765e12),
    "TPU v6 lite": (32 * GIB, 918e12, 1.64e12),
}
# Bidirectional inter-chip interconnect bandwidth per chip, bytes/s (Google Cloud TPU documentation; none
# published for v4 in the same form). Half of it leaves a chip: what `step_profile.interconnect` counts.
ICI_BANDWIDTH = {"TPU v5 lite": 400e9, "TPU v5": 1200e9, "TPU v6 lite": 800e9}
# TensorCore clock, which turns the compiler's `estimated_cycles` into time; each follows from the peak
# above and the matrix units (v4, v5p: 2 cores x 4 MXUs of 128^2; v5e: 4 of 128^2; v6e: 4 of 256^2).
CLOCK_HZ = {"TPU v4": 1.05e9, "TPU v5 lite": 1.5e9, "TPU v5": 1.75e9, "TPU v6 lite": 1.75e9}


def _kind(device_kind: str) -> str:
    for kind in sorted(CHIPS, key=len, reverse=True):  # "TPU v5 lite" before "TPU v5".
        if device_kind.startswith(kind):
            return kind
    raise ValueError(f"no HBM/peak figures for {device_kind!r}; known: {sorted(CHIPS)}")


def chip_figures(device_kind: str) -> tuple[int, float, float]:
    return CHIPS[_kind(device_kind)]


def abstract_batch(c, batch_sharding) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes the input pipeline yields for this config, laid out over the mesh."""
    d = c.data
    audio_dim = datasets.card(d.dataset).media_options.audio_dim
    shapes = {
        "video": ((c.batch_size, d.num_segments, d.frames_per_segment, d.crop_size, d.crop_size, 3), jnp.uint8),
        "audio": ((c.batch_size, d.num_segments, d.audio_frames // d.num_segments, audio_dim), jnp.float32),
        "label": ((c.batch_size,), jnp.int32),
        "mask": ((c.batch_size,), jnp.bool_),
    }
    return {k: jax.ShapeDtypeStruct(s, t, sharding=batch_sharding) for k, (s, t) in shapes.items()}


def compile_train_step(c, devices) -> tuple[jax.stages.Compiled, jax.sharding.Mesh]:
    """The jitted train step of `train.py`, compiled for `devices` (real or from a topology)."""
    lowered, mesh = lower_train_step(c, devices)
    return lowered.compile(), mesh


def model_flops(c) -> float:
    """FLOPs of one train step over all devices as the model defines them: the config's step with the
    reference window attention and no rematerialisation, lowered (not compiled) for one CPU device. A
    kernel's cost estimate counts the work it makes the chip do, padding included, and remat recomputes
    the forward pass: both are cost, not model FLOPs."""
    c = c.copy_and_resolve_references()
    with c.unlocked():
        c.model.attention = "xla"
        del c.model["remat"]  # Re-added: an override such as "dots" has fixed the field's type to str.
        c.model.remat = False
        c.mesh.axes = {axis: 1 for axis in c.mesh.axes}
    lowered, _ = lower_train_step(c, jax.devices("cpu")[:1])
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def lower_train_step(c, devices) -> tuple[jax.stages.Lowered, jax.sharding.Mesh]:
    """The jitted train step of `train.py`, lowered for `devices`."""
    num_processes = len({getattr(d, "process_index", 0) for d in devices})
    mesh = sharding.make_mesh(config_checks.validate(c, len(devices), num_processes), devices)
    model_cfg = config_checks.model_config(c, platform=devices[0].platform)  # "tpu" for a topology's devices.
    card = datasets.card(c.data.dataset)
    datasets.check_num_classes(model_cfg.num_classes, c.data.dataset, card)
    tx = train_step.make_optimizer(c, updates_per_epoch=1000)  # The schedule's length does not change the step.

    make = train_step.model_and_optimizer(model_cfg, tx, c.seed)
    optimizer_axis = train_step.optimizer_axis(c)
    graphdef, state, _ = sharding.sharded_state(make, mesh, DEFAULT_RULES, train_step.optimizer_split(optimizer_axis))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = input_pipeline.batch_sharding(mesh, config_checks.BATCH_AXES)
    spec = train_step.LossSpec(c.loss, card.class_polarity, tuple(c.ep_ce_lambdas))
    step, _ = train_step.make_steps(graphdef, shardings, batch_sharding, mesh, spec, optimizer_axis)
    return step.lower(state, abstract_batch(c, batch_sharding)), mesh


def report(c, topology: str, chip_memory: int | None = None, profile_top: int = 0, hlo_out: str | None = None) -> dict:
    """Compiles for `topology` and returns the figures printed by the command (`profile_top` > 0: with the
    per-part profile and that many top instructions)."""
    from jax.experimental import topologies

    # v4 chips have two TensorCores; JAX runs them as one "megacore" device on real hosts, so compile so.
    kwargs = {"chip_config_name": "megacore"} if topology.startswith("v4") else {}
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
    hbm, peak_flops, bandwidth = chip_figures(devices[0].device_kind)
    hbm = chip_memory or hbm
    # Should a chip still show up as several devices, they share its HBM and peak.
    per_chip_devices = len({getattr(d, "core_on_chip", 0) for d in devices})
    compiled, mesh = compile_train_step(c, devices)
    mem = compiled.memory_analysis()  # Per device: every device runs the same partitioned program.
    per_device = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    per_device += mem.temp_size_in_bytes + mem.generated_code_size_in_bytes
    per_chip = per_device * per_chip_devices
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops_device = float(cost.get("flops", 0.0))
    bytes_device = float(cost.get("bytes accessed", 0.0))
    step_s = max(flops_device * per_chip_devices / peak_flops, bytes_device * per_chip_devices / bandwidth)
    result = {
        "topology": topology,
        "device_kind": devices[0].device_kind,
        "chips": len(devices) // per_chip_devices,
        "devices": len(devices),
        "mesh": dict(mesh.shape),
        "batch_size": c.batch_size,
        "per_chip_bytes": int(per_chip),
        "per_chip_gib": round(per_chip / GIB, 3),
        "memory_per_device": {
            "arguments": int(mem.argument_size_in_bytes),
            "outputs": int(mem.output_size_in_bytes),
            "aliased": int(mem.alias_size_in_bytes),
            "temporaries": int(mem.temp_size_in_bytes),
            "code": int(mem.generated_code_size_in_bytes),
        },
        "chip_hbm_bytes": int(hbm),
        "fits": per_chip <= hbm,
        "flops_per_step": flops_device * len(devices),
        "bytes_accessed_per_chip": bytes_device * per_chip_devices,
        "estimated_step_s": step_s,
        "estimated_clips_per_s": c.batch_size / step_s if step_s else None,
        "flop_bound_s": flops_device * per_chip_devices / peak_flops,
    }
    if profile_top or hlo_out:
        text = compiled.as_text()
        if hlo_out:
            with open(hlo_out, "w") as f:
                f.write(text)
        if profile_top:
            clock = CLOCK_HZ[_kind(devices[0].device_kind)]
            roofline = step_profile.Roofline(clock, peak_flops, bandwidth)
            profile = step_profile.summarize(step_profile.parse_entry(text, roofline), clock, top=profile_top)
            profile["interconnect"] = step_profile.interconnect(text, len(devices))
            if ici := ICI_BANDWIDTH.get(_kind(devices[0].device_kind)):
                profile["interconnect_ici_bytes_per_s"] = ici
                profile["interconnect_min_ms"] = 1e3 * profile["interconnect"]["total"] / (ici / 2)
            # Against the model's FLOPs (reference attention), not the compiled program's (see model_flops).
            flops = model_flops(c)
            result["model_flops_per_step"] = flops
            result["model_flop_bound_s"] = flops / (len(devices) // per_chip_devices) / peak_flops
            profile["x_flop_bound"] = profile["estimated_ms"] / 1e3 / result["model_flop_bound_s"]
            result["profile"] = profile
    return result


def _define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/base.py.", lock_config=True)
    flags.DEFINE_string("topology", None, "A TPU topology name, e.g. v5e:4x4, v4:2x2x2, v5p:4x4x4.")
    flags.DEFINE_float("chip_memory_gib", None, "Override the chip's HBM (GiB).")
    flags.DEFINE_bool("profile", False, "Print where the step's cycles and HBM bytes go, per part and instruction.")
    flags.DEFINE_integer("profile_top", 15, "Instructions listed by --profile, by bytes and by cycles.")
    flags.DEFINE_string("hlo_out", None, "Write the compiled HLO text (TPU layouts, estimated cycles) here.")
    flags.mark_flags_as_required(["config", "topology"])


def _chips_in(topology: str) -> int | None:
    """Devices of a topology name such as "v5e:4x4" (one per chip; v4 and v5p chips are compiled as
    megacores), or None for a name this does not parse."""
    dims = topology.partition(":")[2].split("x")
    return math.prod(int(d) for d in dims) if all(d.isdigit() for d in dims) else None


def _check_tpu_compiler() -> None:
    """Without libtpu, JAX cannot describe a TPU topology ("Unable to initialize backend 'tpu'")."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        raise cli.UserError('compiling for TPUs needs libtpu: pip install -e ".[tpu]"')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    _check_tpu_compiler()
    config = cli.config_value(flags.FLAGS["config"])
    chips = _chips_in(f.topology)
    if chips:  # A broken config fails before libtpu starts; the compile checks it again, per host.
        config_checks.validate(config, chips, 1)
    memory = int(f.chip_memory_gib * GIB) if f.chip_memory_gib else None
    result = report(config, f.topology, memory, f.profile_top if f.profile else 0, f.hlo_out)
    logging.info(
        "%s (%d x %s), mesh %s: %.2f GiB per chip of %.0f GiB; %.3g FLOPs per step; roofline %.1f ms per step,"
        " %.0f clips/s", result["topology"], result["chips"], result["device_kind"], result["mesh"],
        result["per_chip_gib"], result["chip_hbm_bytes"] / GIB, result["flops_per_step"],
        1e3 * result["estimated_step_s"], result["estimated_clips_per_s"] or math.nan,
    )  # fmt: skip
    if "profile" in result:
        p = result["profile"]
        print(step_profile.format_report(p))
        print(
            f"compiler's estimate {p['estimated_ms']:.1f} ms per step, {p['x_flop_bound']:.1f}x the model's FLOP "
            f"bound ({1e3 * result['model_flop_bound_s']:.1f} ms); {p['hbm_bytes'] / 1e9:.2f} GB of HBM traffic per"
            f" chip (padded to tiles; XLA's logical count {result['bytes_accessed_per_chip'] / 1e9:.2f} GB); "
            f"{100 * p['kernel_cycles'] / max(p['cycles'], 1):.0f}% of the cycles modelled from kernels' cost estimates"
        )
    print(json.dumps(result), flush=True)
    if not result["fits"]:
        print(
            f"does not fit: {result['per_chip_gib']:.2f} GiB per chip > {result['chip_hbm_bytes'] / GIB:.0f} GiB "
            "of HBM; shard more (config.mesh.axes fsdp), lower config.batch_size, or set config.model.remat=True",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

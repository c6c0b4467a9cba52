"""`python -m avcanet_jax.aot` compiles the real train step for a TPU topology with libtpu on this CPU."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from avcanet_jax import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_step_compiles_for_a_v5e_slice_reports_its_figures_and_exits_1_when_it_does_not_fit():
    """One compile (about a minute on 2 cores): the demo step on a 2x2 v5e slice with its HBM set below
    what the step needs, so the same run checks the figures and the does-not-fit exit. It runs while
    another process holds libtpu's machine-wide lock, which must not stop it."""
    pytest.importorskip("libtpu", reason="the ahead-of-time TPU compile needs the `tpu` extra (libtpu)")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    with _libtpu_held_by_another_process(env):
        proc = subprocess.run(
            [sys.executable, "-m", "avcanet_jax.aot", "--config=configs/demo.py", "--topology=v5e:2x2",
             "--config.batch_size=16", "--config.mesh.axes.data=2", "--config.mesh.axes.fsdp=2",
             "--chip_memory_gib=0.01", "--profile", "--profile_top=5"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]  # Not 0: the HBM was set too small, on purpose.
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["topology"] == "v5e:2x2" and result["chips"] == 4 and result["device_kind"] == "TPU v5 lite"
    assert result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    memory = result["memory_per_device"]
    assert (
        result["per_chip_bytes"]
        == sum(memory[k] for k in ("arguments", "outputs", "temporaries", "code")) - memory["aliased"]
    )
    assert memory["aliased"] > 0  # The donated train state is updated in place.
    assert result["per_chip_bytes"] > result["chip_hbm_bytes"] == int(0.01 * 2**30) and result["fits"] is False
    assert "does not fit" in proc.stderr
    assert 1e8 < result["flops_per_step"] < 1e11  # Measured: 2.5e9 for 16 toy clips (4 x 4 x 32 x 32).
    assert result["estimated_step_s"] > 0
    # --profile: every instruction in one part; the parts add up to the totals the compiler estimates.
    profile = result["profile"]
    parts = {r["part"]: r for r in profile["parts"]}
    assert {"swin.patch_embed", "swin.stage1.attention", "swin.stage4.mlp", "audio", "optimizer"} <= set(parts)
    assert sum(r["bytes"] for r in parts.values()) == profile["hbm_bytes"] > 0
    assert sum(r["cycles"] for r in parts.values()) == profile["cycles"] > 0
    assert parts["swin.stage1.attention"]["bwd_bytes"] > 0  # The backward pass is attributed too.
    assert profile["x_flop_bound"] > 1 and len(profile["top_by_cycles"]) == 5
    assert "swin.stage1.attention" in proc.stdout and "top instructions by cycles" in proc.stdout
    # The gradients are summed over the 4 devices the batch is split over; the compiler gives that no cycles.
    sent = profile["interconnect"]
    assert sent["all-reduce"] > 0 and sent["total"] >= sent["all-reduce"]
    assert profile["interconnect_min_ms"] == pytest.approx(1e3 * sent["total"] / 200e9)  # v5e: 400 GB/s both ways.
    assert "interconnect, not in the cycles" in proc.stdout and "400 GB/s bidirectional ICI" in proc.stdout


@contextlib.contextmanager
def _libtpu_held_by_another_process(env):
    """A plain JAX process that initialises libtpu (and finds no chip), which takes libtpu's machine-wide
    lock (/tmp/libtpu_lockfile) for as long as it runs, as any JAX program here did before `runtime`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import jax, time; jax.devices(); print('held', flush=True); time.sleep(900)"],
        env={k: v for k, v in env.items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_programs_on_a_machine_without_tpus_leave_libtpu_alone():
    """`runtime.start` keeps JAX off libtpu where no TPU chip is attached, so its lock stays free."""
    pytest.importorskip("libtpu")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "ALLOW_MULTIPLE_LIBTPU_LOAD")}
    code = "from avcanet_jax import runtime; runtime.start('off'); import jax; print(jax.devices()[0].platform)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["cpu"], proc.stderr[-3000:]
    assert "tpu" not in proc.stderr.lower()  # Not even libtpu's start-up warnings.


def test_chip_figures_know_the_generations_in_the_readme():
    assert aot.chip_figures("TPU v5 lite")[0] == 16 * 2**30
    assert aot.chip_figures("TPU v5")[0] == 95 * 2**30  # Not confused with "TPU v5 lite".
    assert aot.chip_figures("TPU v4")[0] == 32 * 2**30
    with pytest.raises(ValueError, match="TPU v9"):
        aot.chip_figures("TPU v9")

"""Several JAX processes on this machine, as on a pod: a localhost coordinator, 4 fake CPU devices each,
gloo collectives between them, one shared workdir.

A 1-process run preempted by SIGTERM is resumed by 2 processes, which train on exactly the global
batches of the uninterrupted 1-process run (`trained`), gather their evaluation from both processes and
report the same metrics; both processes write their shards of each checkpoint; only process 0 writes
logs, metrics and TensorBoard files; a 1-process run resumes from the 2-process checkpoint and again ends
like `trained`. SIGTERM on one process of a job stops every process at the same step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
from conftest import TEST_XLA_FLAGS, tiny_train_config, tiny_train_flags

from avcanet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_job(cmd: list[str], processes: int, devices_per_process: int, timeout: int = 600) -> list[tuple[str, str]]:
    """Runs `cmd` as processes 0..n-1 of one JAX job; returns each one's (stdout, stderr)."""
    port = _free_port()
    procs = []
    for i in range(processes):
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process} {TEST_XLA_FLAGS}",
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(processes),
            "JAX_PROCESS_ID": str(i),
        }
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, text=True, **pipes))
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:  # One process failing leaves the others waiting in a collective.
            p.kill()
    if any(p.returncode for p in procs):  # Every process's end: the one that failed first may look fine.
        report = "\n".join(f"--- process {i} exited {p.returncode}:\n{err[-4000:]}"
                            for i, (p, (_, err)) in enumerate(zip(procs, outputs, strict=True)))  # fmt: skip
        raise AssertionError(report)
    return outputs


RTOL = 2e-3  # Losses of the same run on other meshes and process counts (see the first use).


def _read_json(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as fh:
        return json.load(fh)


def _files(root: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def test_preempted_run_resumed_by_two_processes_then_by_one_ends_like_an_uninterrupted_run(
    trained, tiny_dataset, tmp_path
):
    workdir_a, result_a = trained
    history_a = {h["step"]: h["loss"] for h in _read_json(workdir_a, "train_history.json")}
    workdir = str(tmp_path / "preempted")
    cmd = [sys.executable, "-m", "avcanet_jax.main", f"--workdir={workdir}", *tiny_train_flags(tiny_dataset)]

    # One process, preempted as soon as the trainer watches for SIGTERM, before it compiles: it finishes
    # its first step, saves it and exits cleanly.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "SIGTERM saves a checkpoint" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, "".join(seen) + err
    assert json.loads(out.strip().splitlines()[-1]) == {"stopped_at": 1}
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]

    # Two processes resume it and finish the run, checkpointing every 3 steps. Their mesh shards every
    # parameter over all 8 devices (fsdp), so each process holds, and must save, its own part of the state.
    before = _files(workdir)
    fsdp = ["--config.mesh.axes.data=1", "--config.mesh.axes.fsdp=8", "--config.checkpoint_every_steps=3"]
    (out0, err0), (out1, err1) = _run_job(cmd + fsdp, processes=2, devices_per_process=4)
    assert "process 0 of 2, 4 local of 8 devices" in err0 and "resuming a 1-process run with 2 processes" in err0
    result_b = json.loads(out0.strip().splitlines()[-1])
    assert "{" not in out1  # No result printed by process 1,
    assert "step 2/6" in err0 and "step 2/6" not in err1 and "test: accuracy" not in err1  # no progress logged.
    assert "compiling the train step..." in err0 and "compiled the train step in" in err0
    history_b = _read_json(workdir, "train_history.json")
    assert [h["step"] for h in history_b] == [1, 2, 3, 4, 5, 6]  # The first run's step, then the resumed run's.
    starts = [json.loads(line) for line in open(os.path.join(workdir, "config_history.jsonl"))]
    assert [s["start_step"] for s in starts] == [0, 1] and starts[1]["config"]["mesh"]["axes"]["fsdp"] == 8
    # The meshes differ, so reductions run in another order; from the authors' initialisation (PyTorch's
    # uniform starts, cloned q/k/v/out) Adam grows those rounding differences to ~1e-4 within 6 steps. A
    # wrong batch or a lost step moves the loss by far more (consecutive steps differ by 10-30%).
    np.testing.assert_allclose([h["loss"] for h in history_b], [history_a[s] for s in range(1, 7)], rtol=RTOL)
    test_b = _read_json(workdir, "eval", "test_metrics.json")
    for key in ("accuracy", "uar", "weighted_f1", "polarity_accuracy", "audio_only_accuracy", "confusion_counts"):
        assert test_b[key] == result_a[key], key
    assert result_b["accuracy"] == result_a["accuracy"]
    # The per-video predictions, gathered from both processes: every test video once, as one process saw it.
    rows_a, rows_b = ([json.loads(line) for line in open(os.path.join(w, "eval", "test_predictions.jsonl"))]
                      for w in (workdir_a, workdir))  # fmt: skip
    assert [(r["video_id"], r["predicted"]) for r in rows_b] == [(r["video_id"], r["predicted"]) for r in rows_a]

    # Every process wrote its shards of every checkpoint; process 0 alone wrote the rest.
    for step in ("3", "6"):
        state = os.path.join(workdir, "checkpoints", step, "state")
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state))
        assert _read_json(workdir, "checkpoints", step, "data", "metadata")["process_count"] == 2
    outside = {f for f in _files(workdir) if not f.startswith(("checkpoints/", "best/"))}
    events = [f for f in outside if f.startswith("tensorboard/")]
    assert len(set(events) - before) == 1  # The job's; a second writer would have left a second event file.
    assert outside - set(events) == {
        "config.json", "config_history.jsonl", "train_history.json",
        "eval/test_metrics.json", "eval/test_confusion.png", "eval/test_predictions.jsonl",
    }  # fmt: skip

    # One process resumes the two-process checkpoint of step 3 and ends like the others.
    workdir_c = str(tmp_path / "one_again")
    shutil.copytree(os.path.join(workdir, "checkpoints", "3"), os.path.join(workdir_c, "checkpoints", "3"))
    result_c = train.train_and_evaluate(tiny_train_config(tiny_dataset), workdir_c)
    history_c = _read_json(workdir_c, "train_history.json")
    assert [h["step"] for h in history_c] == [4, 5, 6]
    np.testing.assert_allclose([h["loss"] for h in history_c], [history_a[s] for s in (4, 5, 6)], rtol=RTOL)
    for key in ("accuracy", "uar", "confusion_counts"):
        assert result_c[key] == result_a[key], key


def test_sigterm_on_one_process_stops_all_of_them_at_the_same_step():
    cmd = [sys.executable, os.path.join("tests", "jobs", "preemption_job.py"), "--signal_process=1", "--signal_step=3"]
    outputs = _run_job(cmd, processes=2, devices_per_process=1, timeout=120)
    stops = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [s["process"] for s in stops] == [0, 1]
    assert stops[0]["stopped_at"] == stops[1]["stopped_at"]
    assert 3 < stops[0]["stopped_at"] < 500  # Stopped by the signal, after it was sent.
    assert "SIGTERM caught" in outputs[1][1]

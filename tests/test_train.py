"""End to end on 8 fake devices with a (4, 2) mesh through the real builder and pipeline: the reports a
run leaves, `--mode=eval`, and a run preempted with SIGTERM that resumes and ends exactly like an
uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys

import numpy as np
from conftest import tiny_train_config, tiny_train_flags
from PIL import Image

from avcanet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_json(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as fh:
        return json.load(fh)


def _tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars from TensorBoard event files, read with the event protocol buffer (no TensorFlow)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        pos = 0
        while pos < len(data):  # Records: length u64, crc u32, payload, crc u32.
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 16 + length
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_run_writes_metrics_confusion_plot_curves_and_config(trained):
    workdir, result = trained
    saved = _read_json(workdir, "eval", "test_metrics.json")
    assert saved["num_examples"] == result["num_examples"] == 6
    assert {"accuracy", "uar", "weighted_f1", "polarity_accuracy", "audio_only_accuracy"} <= set(saved)
    assert np.asarray(saved["confusion_counts"]).sum() == 6
    with Image.open(os.path.join(workdir, "eval", "test_confusion.png")) as png:
        assert png.format == "PNG" and min(png.size) > 300
    scalars = _tensorboard_scalars(os.path.join(workdir, "tensorboard"))
    history = _read_json(workdir, "train_history.json")
    assert [s for s, _ in scalars["train/loss"]] == [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [h["loss"] for h in history], rtol=1e-6)
    assert scalars["train/lr"][0][1] > 0 and "test/uar" in scalars
    assert _read_json(workdir, "config.json")["mesh"]["axes"] == {"data": 4, "fsdp": 2, "tensor": 1}


def test_eval_mode_reproduces_the_test_metrics(trained, tiny_dataset):
    workdir, result = trained
    os.remove(os.path.join(workdir, "eval", "test_confusion.png"))
    results = train.evaluate_workdir(tiny_train_config(tiny_dataset), workdir)
    assert set(results) == {"test"}  # The tiny dataset has no validation split.
    assert results["test"]["checkpoint_step"] == 6  # No validation, so no best: the latest state.
    for key in ("accuracy", "uar", "confusion_counts", "audio_only_accuracy"):
        assert results["test"][key] == result[key]
    assert os.path.exists(os.path.join(workdir, "eval", "test_confusion.png"))


def test_sigterm_saves_and_the_resumed_run_ends_exactly_like_an_uninterrupted_one(trained, tiny_dataset, tmp_path):
    workdir_a, result_a = trained
    workdir_b = str(tmp_path / "preempted")
    cmd = [sys.executable, "-m", "avcanet_jax.main", f"--workdir={workdir_b}", *tiny_train_flags(tiny_dataset)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # Preempt as soon as the trainer has its handler, before it compiles.
        seen.append(line)
        if "SIGTERM saves a checkpoint" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, "".join(seen) + err
    assert json.loads(out.strip().splitlines()[-1]) == {"stopped_at": 1}
    assert os.listdir(os.path.join(workdir_b, "checkpoints")) == ["1"]

    result_b = train.train_and_evaluate(tiny_train_config(tiny_dataset), workdir_b)
    history_a = _read_json(workdir_a, "train_history.json")
    history_b = _read_json(workdir_b, "train_history.json")
    assert [h["step"] for h in history_b] == [2, 3, 4, 5, 6]
    assert [h["loss"] for h in history_b] == [h["loss"] for h in history_a if h["step"] > 1]
    for key in ("accuracy", "uar", "confusion_counts"):
        assert result_b[key] == result_a[key]

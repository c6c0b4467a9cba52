"""End to end on 8 fake devices with a (4, 2) mesh through the real builder and pipeline: the reports a
run leaves and `--mode=eval`. Preemption and resuming are in test_multiprocess.py."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
from conftest import tiny_train_config
from PIL import Image

from avcanet_jax import train


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

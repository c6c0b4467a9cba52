"""End to end on 8 fake devices with a (4, 2) mesh through the real builder and pipeline: a run that is
stopped and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os

import pytest

from avcanet_jax import train
from configs import demo


def _config(data_dir, **kw):
    c = demo.get_config()
    c.data.dataset = "emotions/full"
    c.data.data_dir = data_dir
    c.batch_size = 8  # 24 train examples: 3 steps per epoch.
    c.num_epochs = 2
    c.log_every_steps = 1
    c.checkpoint_every_steps = 1000
    c.mesh.axes = {"data": 4, "fsdp": 2, "tensor": 1}
    for k, v in kw.items():
        setattr(c, k, v)
    return c


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run_a"))
    return workdir, train.train_and_evaluate(_config(tiny_dataset), workdir)


def test_end_to_end_writes_metrics(uninterrupted):
    workdir, result = uninterrupted
    with open(os.path.join(workdir, "eval", "test_metrics.json")) as fh:
        saved = json.load(fh)
    assert saved["num_examples"] == result["num_examples"] > 0
    assert {"accuracy", "uar", "weighted_f1", "polarity_accuracy", "audio_only_accuracy"} <= set(saved)


def test_resume_continues_exactly(tiny_dataset, uninterrupted, tmp_path):
    workdir_a, result_a = uninterrupted
    stopped = train.train_and_evaluate(_config(tiny_dataset, max_steps=4), str(tmp_path))
    assert stopped == {"stopped_at": 4}  # Mid-epoch 2.
    result_b = train.train_and_evaluate(_config(tiny_dataset), str(tmp_path))
    with open(os.path.join(workdir_a, "train_history.json")) as fh:
        history_a = json.load(fh)
    with open(os.path.join(tmp_path, "train_history.json")) as fh:
        history_b = json.load(fh)
    tail_a = [h for h in history_a if h["step"] > 4]
    assert [h["loss"] for h in history_b] == [h["loss"] for h in tail_a]
    for key in ("accuracy", "uar", "confusion_counts"):
        assert result_b[key] == result_a[key]

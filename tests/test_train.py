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


def test_predictions_file_holds_every_test_video_once_and_reproduces_the_metrics(trained, tiny_dataset):
    import tensorflow_datasets as tfds

    workdir, result = trained
    rows = [json.loads(line) for line in open(os.path.join(workdir, "eval", "test_predictions.jsonl"))]
    metrics = _read_json(workdir, "eval", "test_metrics.json")
    source = tfds.data_source("emotions/full", split="test", data_dir=tiny_dataset)
    assert [r["video_id"] for r in rows] == [source[i]["video_id"].decode() for i in range(len(source))]
    assert len(rows) == metrics["num_examples"] == 6
    names = list(metrics["per_class_accuracy"])
    counts = np.zeros((len(names), len(names)), int)
    for r in rows:
        counts[names.index(r["label"]), names.index(r["predicted"])] += 1
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5 and r["has_audio"] in (True, False)
        assert {r["polarity"], r["predicted_polarity"]} <= {"positive", "neutral", "negative"}
    assert counts.tolist() == metrics["confusion_counts"]
    assert np.mean([r["label"] == r["predicted"] for r in rows]) == metrics["accuracy"] == result["accuracy"]
    audio = np.mean([r["label"] == max(r["audio_probabilities"], key=r["audio_probabilities"].get) for r in rows])
    assert audio == metrics["audio_only_accuracy"]
    polarity = np.mean([r["polarity"] == r["predicted_polarity"] for r in rows])
    assert polarity == metrics["polarity_accuracy"]


def test_multi_view_evaluation_averages_each_views_probabilities(trained, tiny_dataset, tmp_path):
    """2 x 3 views through the sharded evaluation equal the model applied to each view of each test
    video directly, softmax averaged."""
    import shutil

    import jax
    import tensorflow_datasets as tfds
    from flax import nnx

    from avcanet_jax import config_checks
    from avcanet_jax.checkpointing import Checkpoints
    from avcanet_jax.clip_sampling import make_audio, make_eval_views

    workdir = str(tmp_path / "w")
    shutil.copytree(trained[0], workdir)
    c = tiny_train_config(tiny_dataset)
    c.eval.temporal_views, c.eval.spatial_views = 2, 3
    result = train.evaluate_workdir(c, workdir)["test"]
    assert result["views"] == {"temporal": 2, "spatial": 3}
    rows = {r["video_id"]: r for r in result["predictions"]}

    run = train.prepare(c, splits=())
    ckpt = Checkpoints(workdir)
    state = ckpt.restore(run.abstract_state)
    ckpt.close()
    model, _ = nnx.merge(run.graphdef, jax.device_get(state))
    model.eval()
    forward = jax.jit(lambda video, audio: jax.nn.softmax(model(video, audio)["logits"], -1))
    spec = config_checks.clip_spec(c)
    source = tfds.data_source("emotions/full", split="test", data_dir=tiny_dataset)
    for i in range(len(source)):
        example = source[i]
        views = make_eval_views(example["frames"], spec, 2, 3)
        audio = np.repeat(make_audio(example["audio"], spec)[None], len(views), axis=0)
        expected = np.asarray(forward(views, audio)).mean(0)
        got = rows[example["video_id"].decode()]["probabilities"]
        np.testing.assert_allclose([got[name] for name in got], expected, atol=2e-5)
    one_view = train.evaluate_workdir(tiny_train_config(tiny_dataset), workdir)["test"]
    assert one_view["accuracy"] == trained[1]["accuracy"] and one_view["views"] == {"temporal": 1, "spatial": 1}

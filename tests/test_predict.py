"""`python -m avcanet_jax.predict` on the raw test videos of a trained workdir, plus broken files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import tensorflow_datasets as tfds

import tfds_emotions  # noqa: F401
from avcanet_jax import predict
from avcanet_jax.metrics import confusion
from tfds_emotions.classes import EMOTIONS_CLASSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_predictions_on_raw_videos_match_the_evaluation(trained, tiny_dataset, tiny_raw):
    """Predicting from the raw files goes through the dataset's decoding and the eval preprocessing, so
    the six test videos get exactly the predictions the test metrics counted."""
    workdir, result = trained
    test = tfds.data_source("emotions/full", split="test", data_dir=tiny_dataset)
    ids = [test[i]["video_id"] for i in range(len(test))]
    ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
    paths = [os.path.join(tiny_raw, f"{video_id}.mp4") for video_id in ids]
    labels = [EMOTIONS_CLASSES.index(video_id.split("/")[0]) for video_id in ids]

    predictor = predict.load(workdir)
    rows = list(predict.predict(predictor, paths, batch_size=4))  # 6 videos: one full, one padded batch.
    assert [r["path"] for r in rows] == paths
    preds = [EMOTIONS_CLASSES.index(r["emotion"]) for r in rows]
    assert confusion(np.asarray(labels), np.asarray(preds), 6).tolist() == result["confusion_counts"]
    for r in rows:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
        assert r["probabilities"][r["emotion"]] == max(r["probabilities"].values())
        assert r["polarity"] in ("positive", "neutral", "negative") and r["checkpoint_step"] == 6
        assert {"audio_only", "visual_only"} <= set(r) and r["has_audio"]


def test_command_reports_a_corrupt_file_and_still_predicts_the_others(trained, tiny_raw, tmp_path):
    workdir, _ = trained
    good = os.path.join(tiny_raw, EMOTIONS_CLASSES[0], "v0.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    missing = str(tmp_path / "missing.mp4")
    folder = tmp_path / "folder"  # A directory: its videos, nested too; other files are not videos.
    (folder / "nested").mkdir(parents=True)
    shutil.copy(corrupt, folder / "a_bad.mp4")
    shutil.copy(good, folder / "nested" / "b.mov")
    (folder / "notes.txt").write_text("not a video")
    output = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "avcanet_jax.predict", f"--workdir={workdir}", good, str(corrupt), missing, str(folder),
         f"--output={output}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    nested = [str(folder / "a_bad.mp4"), str(folder / "nested" / "b.mov")]
    assert [r["path"] for r in rows] == [good, str(corrupt), missing, *nested]
    assert output.read_text().splitlines() == proc.stdout.splitlines()
    assert "error" in rows[3] and rows[4]["probabilities"] == rows[0]["probabilities"]  # The same video.
    assert "predicted 5/5 videos" in proc.stderr and "3 of 5 videos could not be read" in proc.stderr
    assert rows[0]["emotion"] in EMOTIONS_CLASSES and "error" not in rows[0]
    assert list(rows[0]["polarity_probabilities"]) == ["positive", "neutral", "negative"]  # The dataset's order.
    assert (
        rows[1]["error"].startswith("MediaError: unreadable: not a video FFmpeg can read (")
        and "Errno" not in rows[1]["error"]
    )
    assert "FileNotFoundError" in rows[2]["error"] or "No such file" in rows[2]["error"]


def test_user_errors_are_one_line_with_exit_status_2(tmp_path):
    for args, message in (
        ([f"--workdir={tmp_path / 'none'}", "a.mp4"], "no such directory"),
        ([f"--workdir={tmp_path}", "a.mp4"], "not a training workdir (no config.json)"),
        ([f"--workdir={tmp_path}"], "give video files, directories or glob patterns"),
        ([f"--workdir={tmp_path}", str(tmp_path)], "no videos (.mp4, .mov"),
    ):
        proc = subprocess.run([sys.executable, "-m", "avcanet_jax.predict", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not re.match(r"[IWEF]\d{4} ", line)]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr

"""A workdir is never damaged by a run it refuses: the checks (config against checkpoints, data stream,
splits) come before anything is written, and their messages name the config fields to change."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import tiny_train_config, tiny_train_flags

import tfds_emotions
from avcanet_jax import train
from avcanet_jax.config_checks import ConfigError

LOG_LINE = re.compile(r"[IWEF]\d{4} ")  # absl's log lines (the progress); the rest is what the user reads.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(root: str) -> dict[str, str]:
    """Every file under `root` and its content hash."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def copy_of_trained(trained, tmp_path) -> str:
    workdir = str(tmp_path / "w")
    shutil.copytree(trained[0], workdir)
    return workdir


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 16}, "config.batch_size is 16 but the checkpoint at step 6 was trained with 8"),
        ({"model.dim": 64}, "config.model.dim is 64 here but 32 in the workdir"),
        ({"model.lgf_levels": 3}, "config.model.lgf_levels is 3 here but 2 in the workdir"),
    ],
)
def test_a_refused_resume_or_evaluation_leaves_the_workdir_byte_identical(
    copy_of_trained, tiny_dataset, overrides, message
):
    before = _digest(copy_of_trained)
    c = tiny_train_config(tiny_dataset)
    for field, value in overrides.items():
        parent, _, name = field.rpartition(".")
        setattr(c.get(parent) if parent else c, name, value)
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(c, copy_of_trained)
    if "model." in message:  # --mode=eval checks the checkpoint against the model before restoring it.
        with pytest.raises(ConfigError, match=message):
            train.evaluate_workdir(c, copy_of_trained)
    assert _digest(copy_of_trained) == before


def test_an_empty_split_is_reported_by_the_build_and_refused_before_compiling(tiny_dataset):
    version = str(tfds_emotions.Emotions.VERSION)
    report = json.load(open(os.path.join(tiny_dataset, "emotions", "full", version, "build_report.json")))
    assert set(report["empty_splits"]) == {"validation"}
    assert "rounds to 0 videos in every class (5-5 videos per class" in report["empty_splits"]["validation"]
    c = tiny_train_config(tiny_dataset, select_on_validation=True)
    with pytest.raises(ConfigError, match="has no validation split .* config.select_on_validation=False"):
        train.prepare(c)


def test_the_command_line_names_the_fields_that_differ_in_two_lines(copy_of_trained, tiny_dataset):
    before = _digest(copy_of_trained)
    cmd = [sys.executable, "-m", "avcanet_jax.main", f"--workdir={copy_of_trained}", "--mode=eval",
           *tiny_train_flags(tiny_dataset), "--config.model.resnet_width=16"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(errors) <= 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "avcanet_jax.main: error: " in errors[-1] and "config.model.resnet_width is 16 here but 8" in errors[-1]
    assert _digest(copy_of_trained) == before


def test_files_other_processes_read_are_replaced_whole(tmp_path):
    """Process 0 rewrites config.json while the job's other processes read it: a reader must see the old
    file or the new one, never a truncated one (a truncated read once stopped a process in CI)."""
    import threading

    from avcanet_jax.workdir import replace_file

    path = str(tmp_path / "config.json")
    replace_file(path, json.dumps({"n": 0, "pad": "x" * 100_000}))
    errors, done = [], threading.Event()

    def read():
        while not done.is_set():
            try:
                with open(path, encoding="utf-8") as fh:
                    json.load(fh)
            except ValueError as e:
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(300):
        replace_file(path, json.dumps({"n": n, "pad": "x" * 100_000}))
    done.set()
    reader.join()
    assert not errors and json.load(open(path))["n"] == 299
    assert os.listdir(tmp_path) == ["config.json"]  # No temporary file left behind.

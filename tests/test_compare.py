"""`python -m avcanet_jax.compare`: paired differences of two runs on the same videos, McNemar's test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from avcanet_jax import compare
from avcanet_jax.cli import UserError
from avcanet_jax.metrics import mcnemar_exact

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("Excitation", "Fear", "Neutral", "Relaxation", "Sadness", "Tension")


@pytest.mark.parametrize(
    "only_a, only_b, both, neither", [(0, 0, 5, 5), (5, 0, 3, 2), (3, 7, 20, 1), (10, 25, 50, 0), (40, 41, 9, 9)]
)
def test_mcnemar_equals_the_exact_binomial_test(only_a, only_b, both, neither):
    a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * neither)
    b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * neither)
    result = mcnemar_exact(a, b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (only_a, only_b)
    expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert result["p_value"] == pytest.approx(expected, rel=1e-12)


def _rows(labels, preds, prefix="v"):
    return {f"{prefix}{i}": {"video_id": f"{prefix}{i}", "label": CLASSES[y], "predicted": CLASSES[p]}
            for i, (y, p) in enumerate(zip(labels, preds, strict=True))}  # fmt: skip


def test_paired_differences_contain_the_point_difference_and_are_zero_for_the_same_run():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 400)
    a = np.where(rng.random(400) < 0.5, labels, rng.integers(0, 6, 400))
    b = np.where(rng.random(400) < 0.7, labels, a)  # B fixes part of A's mistakes.
    result = compare.compare(_rows(labels, a), _rows(labels, b), resamples=2000)
    for key in compare.KEYS:
        low, high = result["difference_interval"][key]
        assert low <= result["difference"][key] <= high and low > 0, key  # A real improvement.
    assert result["difference"]["accuracy"] == pytest.approx(np.mean(b == labels) - np.mean(a == labels))
    assert result["mcnemar"]["p_value"] < 1e-6 and result["mcnemar"]["only_a_correct"] == 0
    same = compare.compare(_rows(labels, a), _rows(labels, a), resamples=500)
    assert same["difference_interval"]["uar"] == [0.0, 0.0] and same["mcnemar"]["p_value"] == 1.0


def test_runs_on_different_videos_are_refused():
    labels = np.arange(12) % 6
    with pytest.raises(UserError, match="different videos .1 only in A"):
        compare.compare(_rows(labels, labels), _rows(labels[:11], labels[:11]))


def test_command_prints_a_table_and_one_json_line(tmp_path):
    labels = np.arange(60) % 6
    for name, preds in (("a", labels), ("b", (labels + (np.arange(60) % 4 == 0)) % 6)):
        os.makedirs(tmp_path / name / "eval")
        with open(tmp_path / name / "eval" / "test_predictions.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in _rows(labels, preds).values())
    proc = subprocess.run([sys.executable, "-m", "avcanet_jax.compare", str(tmp_path / "a"), str(tmp_path / "b")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_videos"] == 60 and result["difference"]["accuracy"] == pytest.approx(-0.25)
    assert "McNemar (exact): 15 videos only A gets right, 0 only B" in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "avcanet_jax.compare", str(tmp_path / "a"), str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "evaluate the workdir first" in missing.stderr

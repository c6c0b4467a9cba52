"""Metrics against scikit-learn on known predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from avcanet_jax.metrics import bootstrap_intervals, classification_metrics
from tfds_emotions.classes import EMOTIONS_CLASSES, EMOTIONS_POLARITY, class_polarities


def _logits(preds, n=6):
    return np.eye(n)[preds] * 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 6, 200))
    audio = rng.integers(0, 6, 200)
    m = classification_metrics(
        labels, {"logits": _logits(preds), "logits_audio": _logits(audio), "logits_visual": _logits(labels)},
        EMOTIONS_CLASSES, class_polarities(EMOTIONS_CLASSES, EMOTIONS_POLARITY),
    )  # fmt: skip
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["uar"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(labels, preds, average="weighted"))
    np.testing.assert_allclose(m["confusion_matrix"], skm.confusion_matrix(labels, preds, normalize="true"))
    recalls = skm.recall_score(labels, preds, average=None)
    assert list(m["per_class_accuracy"].values()) == pytest.approx(list(recalls))
    assert m["audio_only_accuracy"] == pytest.approx(skm.accuracy_score(labels, audio))
    assert m["visual_only_accuracy"] == 1.0


def test_polarity_accuracy_counts_same_polarity_confusions_as_right():
    labels = np.array([1, 1, 0, 2])  # Fear, Fear, Excitation, Neutral
    preds = np.array([5, 0, 3, 2])  # Tension (both negative), Excitation, Relaxation (both positive), Neutral
    m = classification_metrics(labels, {"logits": _logits(preds)}, EMOTIONS_CLASSES, [0, 2, 1, 0, 2, 2])
    assert m["accuracy"] == 0.25 and m["polarity_accuracy"] == 0.75
    assert "audio_only_accuracy" not in m


def test_absent_classes_are_left_out_of_uar():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 1, 1, 1])
    m = classification_metrics(labels, {"logits": _logits(preds)}, EMOTIONS_CLASSES)
    assert m["uar"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert np.isnan(m["per_class_accuracy"]["Tension"])


def _noisy(seed: int, n: int, accuracy: float = 0.6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    return labels, np.where(rng.random(n) < accuracy, labels, rng.integers(0, 6, n))


def _reference_intervals(labels, preds, polarity, resamples, seed):
    """The same bootstrap written plainly, one resample at a time with scikit-learn's metrics, drawing the
    documented index arrays in the documented order."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(labels), size=(resamples, len(labels)))
    acc = [skm.accuracy_score(labels[i], preds[i]) for i in idx]
    f1 = [skm.f1_score(labels[i], preds[i], average="weighted", labels=range(6), zero_division=0) for i in idx]
    pol = [np.mean(polarity[labels[i]] == polarity[preds[i]]) for i in idx]
    per_class = []
    for c in range(6):
        members = np.flatnonzero(labels == c)
        draws = rng.integers(0, len(members), size=(resamples, len(members)))
        per_class.append([np.mean(preds[members[d]] == c) for d in draws])
    uar = np.mean(per_class, axis=0)
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in
            {"accuracy": acc, "weighted_f1": f1, "polarity_accuracy": pol, "uar": uar}.items()}  # fmt: skip


def test_bootstrap_intervals_equal_a_plain_reference_are_seeded_and_contain_the_estimate():
    labels, preds = _noisy(0, 300)
    polarity = np.asarray(class_polarities(EMOTIONS_CLASSES, EMOTIONS_POLARITY))
    m = classification_metrics(labels, {"logits": _logits(preds)}, EMOTIONS_CLASSES, polarity)
    reference = _reference_intervals(labels, preds, polarity, resamples=1000, seed=0)
    for key, expected in reference.items():
        np.testing.assert_allclose(m["intervals"][key], expected, rtol=1e-12, err_msg=key)
        assert m["intervals"][key][0] <= m[key] <= m["intervals"][key][1], key
    again = classification_metrics(labels, {"logits": _logits(preds)}, EMOTIONS_CLASSES, polarity)
    assert again["intervals"] == m["intervals"]
    assert bootstrap_intervals(labels, preds, 6, seed=1)["accuracy"] != m["intervals"]["accuracy"]


def test_bootstrap_intervals_shrink_with_more_videos():
    widths = []
    for n in (100, 400, 1600):
        labels, preds = _noisy(n, n)
        low, high = bootstrap_intervals(labels, preds, 6)["accuracy"]
        widths.append(high - low)
    # About 1/sqrt(n): each fourfold increase halves the width (0.19, 0.095, 0.048 for p = 0.6).
    assert widths[0] > 1.6 * widths[1] > 1.6 * 1.6 * widths[2]
    assert 0.15 < widths[0] < 0.23

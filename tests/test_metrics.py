"""Metrics against scikit-learn on known predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from avcanet_jax.metrics import classification_metrics
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

"""The metrics the field reports for video emotion recognition, from labels and logits on the host.

Top-1 accuracy (what papers call WAR), UAR (mean per-class recall), weighted F1, per-class accuracy,
the row-normalised confusion matrix, 3-way polarity accuracy, and the accuracy of the audio-only and
visual-only logits where the model has them, with 95% bootstrap intervals: test sets of a few hundred
to a few thousand videos move these figures by points, so a difference means little without them.
Plain numpy, so evaluation can run anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_metrics(
    labels: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    class_polarity: Sequence[int] | None = None,
) -> dict:
    """Metrics of the fused logits (`outputs["logits"]`) and the unimodal ones when present.

    Classes that never occur in `labels` are left out of UAR and reported as NaN per-class accuracy, as
    scikit-learn's balanced accuracy does.
    """
    labels = np.asarray(labels, np.int64)
    n = len(class_names)
    preds = np.asarray(outputs["logits"]).argmax(-1)
    cm = confusion(labels, preds, n)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0, 2 * precision * recall / (precision + recall), 0.0)
        row_normalised = np.where(support[:, None] > 0, cm / support[:, None], 0.0)
    out = {
        "num_examples": int(len(labels)),
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        "uar": float(np.nanmean(recall)) if np.any(support > 0) else float("nan"),
        "weighted_f1": float(np.sum(np.nan_to_num(f1) * support) / max(support.sum(), 1)),
        "per_class_accuracy": {c: float(r) for c, r in zip(class_names, recall, strict=True)},
        "confusion_matrix": row_normalised.tolist(),
        "confusion_counts": cm.tolist(),
    }
    if class_polarity is not None:
        pol = np.asarray(class_polarity)
        out["polarity_accuracy"] = float((pol[preds] == pol[labels]).mean()) if len(labels) else float("nan")
    for name, key in (("logits_audio", "audio_only_accuracy"), ("logits_visual", "visual_only_accuracy")):
        if name in outputs:
            out[key] = float((np.asarray(outputs[name]).argmax(-1) == labels).mean())
    if len(labels):
        out["intervals"] = bootstrap_intervals(labels, preds, n, class_polarity)
    return out


BOOTSTRAP_RESAMPLES = 1000


def _weighted_f1(cm: np.ndarray) -> np.ndarray:
    """Weighted F1 of confusion matrices [..., true, predicted] (as `classification_metrics`)."""
    support, predicted, tp = cm.sum(-1), cm.sum(-2), np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return (f1 * support).sum(-1) / np.maximum(support.sum(-1), 1)


def _resampled(labels, all_preds, num_classes, class_polarity, resamples, seed) -> list[dict[str, np.ndarray]]:
    """Each metric on each bootstrap resample, for every prediction set in `all_preds` on the same draws
    (so that differences between two models are paired). Draws, in this order: one [resamples, n] index
    array over all videos (accuracy, weighted F1, polarity), then one [resamples, n_c] per class present
    (UAR resamples within each class: it weighs classes equally)."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    n, k = len(labels), num_classes
    idx = rng.integers(0, n, size=(resamples, n))
    members = [np.flatnonzero(labels == c) for c in range(k)]
    within = [m[rng.integers(0, len(m), size=(resamples, len(m)))] for m in members if len(m)]
    lab = labels[idx]
    out = []
    for preds in all_preds:
        preds = np.asarray(preds, np.int64)
        pre = preds[idx]
        cells = (np.arange(resamples)[:, None] * k + lab) * k + pre  # One confusion matrix per resample.
        cms = np.bincount(cells.ravel(), minlength=resamples * k * k).reshape(resamples, k, k)
        values = {"accuracy": (lab == pre).mean(1), "weighted_f1": _weighted_f1(cms)}
        values["uar"] = np.mean([(preds[w] == labels[w]).mean(1) for w in within], axis=0)
        if class_polarity is not None:
            pol = np.asarray(class_polarity)
            values["polarity_accuracy"] = (pol[lab] == pol[pre]).mean(1)
        out.append(values)
    return out


def _percentiles(values: dict[str, np.ndarray], level: float) -> dict[str, list[float]]:
    tail = 100 * (1 - level) / 2
    return {key: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for key, v in values.items()}


def bootstrap_intervals(
    labels: np.ndarray,
    preds: np.ndarray,
    num_classes: int,
    class_polarity: Sequence[int] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals over videos: {"accuracy": [low, high], "uar", "weighted_f1",
    "polarity_accuracy", and how they were made}. Seeded: the same predictions give the same intervals.
    How the videos are drawn: `_resampled`."""
    (values,) = _resampled(labels, [preds], num_classes, class_polarity, resamples, seed)
    out = _percentiles(values, level)
    return {**out, "level": level, "resamples": resamples, "seed": seed, "method": "percentile bootstrap over videos"}


def paired_difference_intervals(
    labels, preds_a, preds_b, num_classes: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level=0.95
) -> dict[str, list[float]]:
    """Intervals of (metric of B) - (metric of A) on the same test videos, both scored on each resample."""
    a, b = _resampled(labels, [preds_a, preds_b], num_classes, None, resamples, seed)
    return _percentiles({key: b[key] - a[key] for key in a}, level)


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """McNemar's exact test of two classifiers on the same videos: under the null hypothesis, each video
    that one gets right and the other wrong is equally likely either way (two-sided binomial, p = 1/2)."""
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int(np.sum(a_correct & ~b_correct)), int(np.sum(~a_correct & b_correct))
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": min(1.0, 2 * tail)}

"""The metrics the field reports for video emotion recognition, from labels and logits on the host.

Top-1 accuracy (what papers call WAR), UAR (mean per-class recall), weighted F1, per-class accuracy,
the row-normalised confusion matrix, 3-way polarity accuracy, and the accuracy of the audio-only and
visual-only logits where the model has them. Plain numpy, so evaluation can run anywhere.
"""

from __future__ import annotations

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
    return out

"""One pass of the eval step over a split, gathered from every process, and the reports it leaves behind.

Outputs of the eval step are global arrays split over the batch mesh axes; on a pod no single process
holds them, so they are all-gathered (with the labels and padding mask, which travel in the same global
batch and so stay aligned with the logits) before the host computes the metrics. Every process computes
the same metrics; only process 0 writes `W/eval/<split>_metrics.json` and `W/eval/<split>_confusion.png`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from avcanet_jax import input_pipeline, train_step
from avcanet_jax.metrics import classification_metrics
from avcanet_jax.workdir import replace_file


def evaluate(
    eval_step: Callable,
    state,
    pcfg: input_pipeline.PipelineConfig,
    split: str,
    batch_sharding: jax.sharding.NamedSharding,
    class_names: Sequence[str],
    class_polarity: Sequence[int] | None,
) -> dict:
    """Metrics of `state` on every example of `split` (padding excluded), identical on all processes, with
    the per-video outputs they come from under "predictions" (see `prediction_rows`)."""
    gathered: dict[str, list[np.ndarray]] = {}
    for host_batch in input_pipeline.eval_dataset(pcfg, split):
        # The video's identity travels as global arrays too, so it is gathered in the logits' order.
        ids = input_pipeline.to_global({k: host_batch[k] for k in _IDENTITY}, batch_sharding)
        views = host_batch["video"] if pcfg.eval_views != (1, 1) else None
        host = {**train_step.model_batch(host_batch), **({"video": views[:, 0]} if views is not None else {})}
        batch = input_pipeline.to_global(host, batch_sharding)
        logits = eval_step(state, batch) if views is None else _averaged(eval_step, state, batch, views, batch_sharding)
        out = {**logits, "label": batch["label"], "mask": batch["mask"], **ids}
        for k, v in multihost_utils.process_allgather(out, tiled=True).items():
            gathered.setdefault(k, []).append(np.asarray(v))
    arrays = {k: np.concatenate(v) for k, v in gathered.items()}
    keep = arrays.pop("mask").astype(bool)
    arrays = {k: v[keep] for k, v in arrays.items()}
    labels = arrays.pop("label")
    identity = {k: arrays.pop(k) for k in _IDENTITY}
    metrics = classification_metrics(labels, arrays, class_names, class_polarity)
    metrics["views"] = {"temporal": pcfg.eval_views[0], "spatial": pcfg.eval_views[1]}
    metrics["predictions"] = prediction_rows(labels, arrays, identity, class_names, class_polarity)
    return metrics


def _averaged(eval_step: Callable, state, batch: dict, views: np.ndarray, batch_sharding) -> dict:
    """Multi-view testing: per head, the log of the softmax probabilities averaged over the views
    (`views`: [B, V, S, F, H, W, 3]), so that argmax and softmax give the averaged prediction."""
    total = None
    for v in range(views.shape[1]):  # `batch` already holds view 0.
        video = input_pipeline.to_global({"video": views[:, v]}, batch_sharding) if v else {}
        out = eval_step(state, {**batch, **video})
        probs = {k: jax.nn.softmax(x.astype(jnp.float32), -1) for k, x in out.items()}
        total = probs if total is None else {k: total[k] + probs[k] for k in total}
    return {k: jnp.log(p / views.shape[1]) for k, p in total.items()}


_IDENTITY = ("video_id", "index", "has_audio")
_HEADS = (
    ("logits", "probabilities"),
    ("logits_audio", "audio_probabilities"),
    ("logits_visual", "visual_probabilities"),
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def prediction_rows(labels, outputs, identity, class_names, class_polarity) -> list[dict]:
    """One row per video, in split order: `video_id`, `label`, `predicted`, each head's class
    probabilities, `polarity` and `predicted_polarity`, `has_audio`. The predicted class is the argmax of
    the fused logits, as in the metrics."""
    from tfds_emotions.classes import POLARITIES

    order = np.argsort(identity["index"], kind="stable")
    probs = {name: _softmax(outputs[head]) for head, name in _HEADS if head in outputs}
    preds = np.asarray(outputs["logits"]).argmax(-1)
    rows = []
    for i in order:
        row = {
            "video_id": input_pipeline.id_text(identity["video_id"][i]),
            "label": class_names[labels[i]],
            "predicted": class_names[preds[i]],
            **{
                name: {c: round(float(q), 6) for c, q in zip(class_names, p[i], strict=True)}
                for name, p in probs.items()
            },
            "has_audio": bool(identity["has_audio"][i]),
        }
        if class_polarity is not None:
            row["polarity"] = POLARITIES[class_polarity[labels[i]]]
            row["predicted_polarity"] = POLARITIES[class_polarity[preds[i]]]
        rows.append(row)
    return rows


def write_json(path: str, obj) -> None:
    """Writes `obj` as JSON from process 0 only, whole or not at all (`workdir.replace_file`)."""
    if jax.process_index() != 0:
        return
    replace_file(path, json.dumps(obj, indent=1, sort_keys=True))


def plot_confusion(metrics: dict, class_names: Sequence[str], path: str, title: str = "") -> None:
    """Row-normalised confusion matrix with the raw counts in each cell, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # No display on training hosts.
    import matplotlib.pyplot as plt

    rates = np.asarray(metrics["confusion_matrix"], np.float64)
    counts = np.asarray(metrics["confusion_counts"], np.int64)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * n, 0.8 + 0.8 * n), dpi=120)
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, f"{rates[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


HEADLINE = (("accuracy", "accuracy"), ("uar", "UAR"), ("weighted_f1", "weighted F1"))


def with_interval(m: dict, key: str, name: str) -> str:
    """'accuracy 0.850 [0.767, 0.917]': the figure and its bootstrap interval, when there is one."""
    low_high = m.get("intervals", {}).get(key)
    interval = f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""
    return f"{name} {m[key]:.3f}{interval}"


def write_report(workdir: str, split: str, metrics: dict, class_names: Sequence[str], **extra) -> None:
    """`W/eval/<split>_metrics.json` and `W/eval/<split>_confusion.png` (process 0 only)."""
    if jax.process_index() != 0:
        return
    base = os.path.join(workdir, "eval", split)
    metrics = dict(metrics)
    predictions = metrics.pop("predictions", None)
    write_json(f"{base}_metrics.json", {**extra, **metrics})
    if predictions is not None:
        with open(f"{base}_predictions.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in predictions)
    figures = ", ".join(with_interval(metrics, key, name) for key, name in HEADLINE[:2])
    title = f"{split}: {figures} ({metrics['num_examples']} clips; 95% bootstrap intervals)"
    plot_confusion(metrics, class_names, f"{base}_confusion.png", title)

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
import numpy as np
from jax.experimental import multihost_utils

from avcanet_jax import input_pipeline, train_step
from avcanet_jax.metrics import classification_metrics


def evaluate(
    eval_step: Callable,
    state,
    pcfg: input_pipeline.PipelineConfig,
    split: str,
    batch_sharding: jax.sharding.NamedSharding,
    class_names: Sequence[str],
    class_polarity: Sequence[int] | None,
) -> dict:
    """Metrics of `state` on every example of `split` (padding excluded), identical on all processes."""
    gathered: dict[str, list[np.ndarray]] = {}
    for batch in input_pipeline.eval_dataset(pcfg, split):
        batch = input_pipeline.to_global(train_step.model_batch(batch), batch_sharding)
        out = {**eval_step(state, batch), "label": batch["label"], "mask": batch["mask"]}
        for k, v in multihost_utils.process_allgather(out, tiled=True).items():
            gathered.setdefault(k, []).append(np.asarray(v))
    arrays = {k: np.concatenate(v) for k, v in gathered.items()}
    keep = arrays.pop("mask").astype(bool)
    labels = arrays.pop("label")[keep]
    return classification_metrics(labels, {k: v[keep] for k, v in arrays.items()}, class_names, class_polarity)


def write_json(path: str, obj) -> None:
    """Writes `obj` as JSON from process 0 only."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)


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


def write_report(workdir: str, split: str, metrics: dict, class_names: Sequence[str], **extra) -> None:
    """`W/eval/<split>_metrics.json` and `W/eval/<split>_confusion.png` (process 0 only)."""
    if jax.process_index() != 0:
        return
    base = os.path.join(workdir, "eval", split)
    write_json(f"{base}_metrics.json", {**extra, **metrics})
    title = f"{split}: accuracy {metrics['accuracy']:.3f}, UAR {metrics['uar']:.3f} ({metrics['num_examples']} clips)"
    plot_confusion(metrics, class_names, f"{base}_confusion.png", title)

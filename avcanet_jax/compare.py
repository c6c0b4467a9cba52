r"""Compare two trained workdirs on the same test videos: is B better than A, or is it noise?

  python -m avcanet_jax.compare W_A W_B [--split=test]

Reads both workdirs' per-video predictions (`W/eval/<split>_predictions.jsonl`, written by every
evaluation), matches them by `video_id` (refusing sets that differ), and reports for accuracy, UAR and
weighted F1 the difference B - A with a paired bootstrap interval (both models scored on the same
resampled videos), plus McNemar's exact test on the videos exactly one of them gets right. A readable
table goes to stderr, one JSON line to stdout.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags

from avcanet_jax import cli, metrics

KEYS = ("accuracy", "uar", "weighted_f1")


def read_predictions(workdir: str, split: str) -> dict[str, dict]:
    """{video_id: row} of a workdir's predictions file."""
    path = os.path.join(workdir, "eval", f"{split}_predictions.jsonl")
    if not os.path.exists(path):
        raise cli.UserError(
            f"{path} not found: evaluate the workdir first (python -m avcanet_jax.main ... --mode=eval)"
        )
    with open(path, encoding="utf-8") as fh:
        return {row["video_id"]: row for row in map(json.loads, fh)}


def compare(a: dict[str, dict], b: dict[str, dict], resamples: int = 10_000, seed: int = 0) -> dict:
    """The comparison of two {video_id: prediction row} maps over the same videos."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise cli.UserError(
            f"the two runs were evaluated on different videos ({len(only_a)} only in A, e.g. {only_a[:2]}; "
            f"{len(only_b)} only in B, e.g. {only_b[:2]}): compare runs tested on the same split of the same build"
        )
    ids = sorted(a)
    wrong = [v for v in ids if a[v]["label"] != b[v]["label"]]
    if wrong:
        raise cli.UserError(f"the runs disagree on the labels of {len(wrong)} videos, e.g. {wrong[:2]}")
    names = sorted({a[v]["label"] for v in ids} | {r["predicted"] for r in (*a.values(), *b.values())})
    code = {name: i for i, name in enumerate(names)}
    labels = np.asarray([code[a[v]["label"]] for v in ids])
    preds_a = np.asarray([code[a[v]["predicted"]] for v in ids])
    preds_b = np.asarray([code[b[v]["predicted"]] for v in ids])
    k = len(names)
    point = {}
    for run, preds in (("a", preds_a), ("b", preds_b)):
        m = metrics.classification_metrics(labels, {"logits": np.eye(k)[preds]}, names)
        point[run] = {key: m[key] for key in KEYS}
    diff = metrics.paired_difference_intervals(labels, preds_a, preds_b, k, resamples, seed)
    return {
        "num_videos": len(ids),
        "a": point["a"],
        "b": point["b"],
        "difference": {key: point["b"][key] - point["a"][key] for key in KEYS},
        "difference_interval": {key: diff[key] for key in KEYS},
        "interval": {"level": 0.95, "resamples": resamples, "seed": seed, "method": "paired percentile bootstrap"},
        "mcnemar": metrics.mcnemar_exact(preds_a == labels, preds_b == labels),
    }


def table(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"A = {name_a}", f"B = {name_b}", f"{result['num_videos']} videos in both", "",
             f"{'':12} {'A':>8} {'B':>8} {'B - A':>8}   95% interval of B - A"]  # fmt: skip
    for key in KEYS:
        low, high = result["difference_interval"][key]
        lines.append(
            f"{key:12} {result['a'][key]:8.4f} {result['b'][key]:8.4f} {result['difference'][key]:+8.4f}   "
            f"[{low:+.4f}, {high:+.4f}]"
        )
    m = result["mcnemar"]
    lines.append(
        f"McNemar (exact): {m['only_a_correct']} videos only A gets right, {m['only_b_correct']} only B; "
        f"p = {m['p_value']:.4g}"
    )
    return "\n".join(lines)


def _define_flags() -> None:
    flags.DEFINE_string("split", "test", "Which evaluation's predictions to compare.")
    flags.DEFINE_integer("resamples", 10_000, "Bootstrap resamples.")
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.")


def main(argv):
    if len(argv) != 3:
        raise cli.UserError("give two workdirs: python -m avcanet_jax.compare W_A W_B")
    f = flags.FLAGS
    _, workdir_a, workdir_b = argv
    result = compare(read_predictions(workdir_a, f.split), read_predictions(workdir_b, f.split), f.resamples, f.seed)
    print(table(result, workdir_a, workdir_b), file=sys.stderr)
    print(json.dumps({"a": workdir_a, "b": workdir_b, "split": f.split, **result}), flush=True)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

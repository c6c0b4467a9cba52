r"""The evaluation protocol of the public benchmarks: train on every official split, report mean and spread.

  python -m avcanet_jax.protocol --config=configs/ve8.py --workdir=W --config.data.data_dir=DATA
  python -m avcanet_jax.protocol --config=configs/ekman6.py --workdir=W --only=standard_seed1

Runs one training per (dataset, seed) of `config.protocol_datasets` x `config.protocol_seeds` (default:
the config's own dataset and seed), each in `W/<config>[_seed<k>]/` with the usual checkpoints and
reports, so an interrupted protocol resumes where it stopped and finished runs are not repeated. Then
writes `W/summary.json` (every run's test metrics, their mean and sample standard deviation) and
`W/summary.md` (the same as a table). Every run selects its model on its own validation split (carved
from that split's train list), never on test.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from avcanet_jax import cli, evaluation, runtime

METRICS = ("accuracy", "uar", "weighted_f1", "polarity_accuracy", "audio_only_accuracy", "visual_only_accuracy")


def runs(c) -> list[tuple[str, str, int]]:
    """(run name, dataset, seed) of every run the config's protocol asks for."""
    datasets = tuple(c.get("protocol_datasets", None) or (c.data.dataset,))
    seeds = tuple(c.get("protocol_seeds", None) or (c.seed,))
    out = []
    for dataset in datasets:
        for seed in seeds:
            name = dataset.split("/")[-1] + (f"_seed{seed}" if len(seeds) > 1 else "")
            out.append((name, dataset, seed))
    return out


def summarise(results: Sequence[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of each metric over the runs, and
    the 95% interval of the mean (Student's t over the runs; none for a single run)."""
    from scipy import stats

    summary = {"num_runs": len(results), "runs": list(results), "mean": {}, "std": {}, "mean_interval": {}}
    for key in METRICS:
        values = np.asarray([r[key] for r in results if key in r], np.float64)
        if len(values) == len(results) and len(values):
            mean, std = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary["mean"][key], summary["std"][key] = mean, std
            if len(values) > 1:
                half = float(stats.t.ppf(0.975, len(values) - 1)) * std / np.sqrt(len(values))
                summary["mean_interval"][key] = [mean - half, mean + half]
    return summary


def markdown(summary: dict) -> str:
    """The summary as a Markdown table, in percent: one row per run, then mean +- std and the interval."""
    keys = [k for k in METRICS if k in summary["mean"]]
    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in summary["runs"]:
        lines.append(f"| {r['run']} | " + " | ".join(f"{100 * r[k]:.2f}" for k in keys) + " |")
    cells = " | ".join(f"{100 * summary['mean'][k]:.2f} ± {100 * summary['std'][k]:.2f}" for k in keys)
    lines.append(f"| mean ± std ({summary['num_runs']} runs) | {cells} |")
    if summary.get("mean_interval"):
        cells = " | ".join(
            f"{100 * lo:.2f} to {100 * hi:.2f}" for lo, hi in (summary["mean_interval"][k] for k in keys)
        )
        lines.append(f"| 95% interval of the mean | {cells} |")
    return "\n".join(lines) + "\n"


def run_protocol(c, workdir: str, only: Sequence[str] | None = None) -> dict:
    """Trains and tests every run (skipping finished ones), then writes and returns the summary."""
    from avcanet_jax import train

    planned = runs(c)
    unknown = sorted(set(only or ()) - {name for name, _, _ in planned})
    if unknown:
        raise cli.UserError(f"--only: unknown runs {unknown}; this config has {[n for n, _, _ in planned]}")
    results = []
    for name, dataset, seed in planned:
        run_dir = os.path.join(workdir, name)
        done = os.path.join(run_dir, "eval", "test_metrics.json")
        if os.path.exists(done) and name not in (only or ()):
            logging.info("%s: finished earlier, reading %s", name, done)
            with open(done, encoding="utf-8") as fh:
                metrics = json.load(fh)
        elif only and name not in only:
            continue
        else:
            run_c = copy.deepcopy(c)
            run_c.data.dataset, run_c.seed = dataset, seed
            metrics = train.train_and_evaluate(run_c, run_dir)
            if "stopped_at" in metrics:  # SIGTERM: the protocol stops too and resumes on the next call.
                return {"stopped_in": name, **metrics}
        results.append(
            {"run": name, "dataset": dataset, "seed": seed, **{k: metrics[k] for k in METRICS if k in metrics}}
        )
    summary = summarise(results)
    evaluation.write_json(os.path.join(workdir, "summary.json"), summary)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as fh:
            fh.write(markdown(summary))
    return summary


def ablation_runs(c, names: Sequence[str]) -> list[tuple[str, object]]:
    """("full", c) and (name, c with that ablation) for each name ("all": every ablation of the paper)."""
    from configs import ablations

    names = list(ablations.ABLATIONS) if list(names) == ["all"] else list(names)
    unknown = sorted(set(names) - set(ablations.ABLATIONS))
    if unknown:
        raise cli.UserError(f"--ablations: unknown {unknown}; known: all or any of {sorted(ablations.ABLATIONS)}")
    return [("full", c)] + [(name, ablations.apply(copy.deepcopy(c), name)) for name in names]


def run_ablations(c, workdir: str, names: Sequence[str]) -> dict:
    """Trains the full model and each ablation of it in `W/<name>/` (finished runs are read back, so an
    interrupted study resumes), then writes `W/ablations.json` and `W/ablations.md`: per variant its test
    figures with bootstrap intervals and, against the full model on the same test videos, the paired
    difference (interval) and McNemar's p-value."""
    from avcanet_jax import compare, train

    results = {}
    for name, run_c in ablation_runs(c, names):
        run_dir = os.path.join(workdir, name)
        done = os.path.join(run_dir, "eval", "test_metrics.json")
        if os.path.exists(done):
            logging.info("%s: finished earlier, reading %s", name, done)
            with open(done, encoding="utf-8") as fh:
                results[name] = json.load(fh)
        else:
            results[name] = train.train_and_evaluate(run_c, run_dir)
            if "stopped_at" in results[name]:  # SIGTERM: resumes on the next call.
                return {"stopped_in": name, **results[name]}
    full = compare.read_predictions(os.path.join(workdir, "full"), "test")
    rows = []
    for name, m in results.items():
        row = {
            "variant": name,
            **{k: m[k] for k in compare.KEYS},
            "intervals": {k: m["intervals"][k] for k in compare.KEYS},
        }
        if name != "full":
            versus = compare.compare(full, compare.read_predictions(os.path.join(workdir, name), "test"))
            row["versus_full"] = {k: versus[k] for k in ("difference", "difference_interval", "mcnemar")}
        rows.append(row)
    table = {"variants": rows}
    evaluation.write_json(os.path.join(workdir, "ablations.json"), table)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "ablations.md"), "w", encoding="utf-8") as fh:
            fh.write(ablation_markdown(rows))
    return table


def ablation_markdown(rows: Sequence[dict]) -> str:
    """One row per variant, in percent: accuracy, UAR, F1 with intervals; accuracy vs full, McNemar p."""

    def cell(value, interval):
        return f"{100 * value:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"

    lines = ["| variant | accuracy | UAR | weighted F1 | accuracy - full | McNemar p |", "|---" * 6 + "|"]
    for r in rows:
        figures = " | ".join(cell(r[k], r["intervals"][k]) for k in ("accuracy", "uar", "weighted_f1"))
        if "versus_full" in r:
            v = r["versus_full"]
            low, high = v["difference_interval"]["accuracy"]
            diff = 100 * v["difference"]["accuracy"]
            versus = f"{diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {v['mcnemar']['p_value']:.3g}"
        else:
            versus = "| "
        lines.append(f"| {r['variant']} | {figures} | {versus} |")
    return "\n".join(lines) + "\n"


def _define_flags() -> None:
    """Flags exist only when this module is the program, so that importing it never clashes."""
    config_flags.DEFINE_config_file("config", None, "A benchmark config, e.g. configs/ve8.py.", lock_config=True)
    flags.DEFINE_string("workdir", None, "One subdirectory per run, and the summary.")
    flags.DEFINE_list("only", None, "Run names to (re)run, e.g. split01,split02; default: all.")
    flags.DEFINE_list(
        "ablations",
        None,
        "Instead of the benchmark's runs: the config and these ablations of it "
        "(names from configs/ablations.py, or all), each in W/<name>, then W/ablations.md.",
    )
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "See avcanet_jax.main.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    config = cli.config_value(f["config"])
    if f.ablations:
        ablation_runs(config, f.ablations)  # Unknown names fail before anything starts.
    runtime.start(f.distributed)
    if f.ablations:
        table = run_ablations(config, f.workdir, f.ablations)
        if jax.process_index() == 0:
            print(ablation_markdown(table["variants"]) if "variants" in table else json.dumps(table), flush=True)
        return
    summary = run_protocol(config, f.workdir, f.only)
    if jax.process_index() == 0:
        print(markdown(summary) if "runs" in summary else json.dumps(summary), flush=True)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

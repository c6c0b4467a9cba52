"""Building `emotions` on Apache Beam, so that decoding runs on many machines (Dataflow, Flink, Spark) or
on every core of one (the direct runner), with the same output as the local build.

Each video, or each parquet shard (read once, in row order), is one work item; workers decode them
with the local build's own `_process` and tally what they kept and skipped with its `_Tally`. TFDS's
Beam writer orders examples by the same key hash as its local writer, so the splits hold the same
examples in the same order (not the same bytes: each process serialises a tf.Example's feature map in
its own order), and the per-split tallies, written next to the data, become the same `build_report.json`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence

import tensorflow_datasets as tfds
from etils import epath

from tfds_emotions import sources
from tfds_emotions.emotions import _process, _Tally, _tasks

_PART = "build_report.{split}.part.json"


def work_items(items: Sequence[sources.Item]) -> list[list[sources.Item]]:
    """Videos and frame folders one by one; a parquet shard's rows together, so it is read once."""
    shards: dict[tuple[str, str], list[sources.Item]] = {}
    singles = []
    for it in items:
        if it.kind == "parquet":
            shards.setdefault((it.path, it.column), []).append(it)
        else:
            singles.append([it])
    return singles + [shards[k] for k in sorted(shards)]


def _decode(group: list[sources.Item], task_args: tuple) -> Iterator[tuple[str, object]]:
    yield from map(_process, _tasks(group, *task_args))


def _example(result: tuple[str, object]) -> list[tuple[str, dict]]:
    key, outcome = result
    return [] if isinstance(outcome, Exception) else [(key, outcome[0])]


def _tally(result: tuple[str, object]) -> _Tally:
    """A one-item tally; small, so the examples themselves never travel to the combiner."""
    tally = _Tally()
    tally.add(*result)
    return tally


def _merge(tallies: Iterable[_Tally]) -> _Tally:
    return functools.reduce(_Tally.merge, tallies, _Tally())


def _write_part(tally: _Tally, out_dir: str, split: str, num_items: int) -> None:
    part = tally.report(split, num_items)  # Raises, failing the pipeline, when nothing decoded.
    (epath.Path(out_dir) / _PART.format(split=split)).write_text(json.dumps(part))


def split_transform(builder, split: str, items: Sequence[sources.Item]):
    """The `beam.PTransform` yielding (key, example) for one split; the builder returns it to TFDS."""
    beam = tfds.core.lazy_imports.apache_beam
    task_args = builder._task_args()
    out_dir = str(builder.data_path)
    groups = work_items(items)

    @beam.ptransform_fn
    def decode_split(pipeline):
        results = (
            pipeline
            | "WorkItems" >> beam.Create(groups)
            | "Spread" >> beam.Reshuffle()  # Otherwise a runner may keep them all on one worker.
            | "Decode" >> beam.FlatMap(_decode, task_args)
        )
        _ = (
            results
            | "Tally" >> beam.Map(_tally)
            | "Merge" >> beam.CombineGlobally(_merge)
            | "Report" >> beam.Map(_write_part, out_dir, split, len(items))
        )
        return results | "Examples" >> beam.FlatMap(_example)

    return decode_split()


def collect_reports(out_dir: str) -> dict[str, dict]:
    """The split reports the pipeline wrote, removed from `out_dir` once read."""
    parts = {}
    for path in sorted(epath.Path(out_dir).glob(_PART.format(split="*"))):
        parts[path.name.split(".")[1]] = json.loads(path.read_text())
        path.unlink()
    return parts

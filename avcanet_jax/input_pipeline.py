"""The Grain input pipeline: a built `emotions` dataset into global, sharded batches of clips.

  ArrayRecord files (`records.ClipRecords`) -> grain.MapDataset -> seeded shuffle (reshuffled each
  epoch) -> TSN sampling, crop (only the crop's rows decoded) and augmentation -> this process's share
  of each global batch -> multiprocess prefetch -> `jax.Array`s laid out by a mesh sharding.

Training data is one global stream, the same for any number of processes: element i of the shuffled,
repeated split is augmented with a seed derived from i, global batch k is elements [kG, (k+1)G), and
process p of n reads only its part [kG + pG/n, kG + (p+1)G/n) of it. Batch composition, augmentation
and the data position (the number of global batches consumed, i.e. the training step) are therefore
independent of the process count, so a run can resume on a slice with a different number of hosts and
a 2-process run trains on exactly the batches a 1-process run does. Evaluation visits every example
exactly once; the last batch is padded with copies of a real example whose `mask` is False.
Frames stay uint8 until the model normalises them, which keeps host-to-device traffic four times smaller.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from avcanet_jax.clip_sampling import ClipSpec, eval_video, make_audio, make_video
from avcanet_jax.records import ClipRecords


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline needs to know; built from the trainer's config.

    Attributes:
      dataset: TFDS name with config, e.g. "emotions/full".
      data_dir: TFDS data root.
      clip: clip shape and augmentation.
      global_batch_size: examples per step over all processes.
      seed: seeds shuffling and augmentation.
      num_workers: Grain worker processes per host (0: in the main process).
      prefetch_buffer: batches each worker process keeps ready.
      read_threads: threads per process that read and transform examples. JPEG decoding releases the
        GIL but the per-frame Python around it does not: on 2 cores, 2 threads in one process made 1.61x
        one core's clips, 2 worker processes 2.00x (benchmarks/input_pipeline.py), so scale with
        `num_workers`. Grain's default (16 threads, 500 elements buffered) holds gigabytes of clips and
        was 5x slower here.
      read_buffer: examples read ahead per process.
      eval_views: (temporal, spatial) evaluation views per video; (1, 1) is the paper's one centred clip,
        more give `video` a view axis: [views, S, F, crop, crop, 3] per example (`make_eval_views`).
    """

    dataset: str = "emotions/full"
    data_dir: str | None = None
    clip: ClipSpec = ClipSpec()
    global_batch_size: int = 32
    seed: int = 0
    num_workers: int = 0
    prefetch_buffer: int = 2
    read_threads: int = 2
    read_buffer: int = 8
    eval_views: tuple[int, int] = (1, 1)


def data_source(cfg: PipelineConfig, split: str) -> ClipRecords:
    """One split's ArrayRecord files with random access (no TensorFlow), parsed as far as clips need."""
    return ClipRecords(cfg.dataset, split, cfg.data_dir)


def _clip_fields(
    example: Mapping[str, Any], spec: ClipSpec, rng: np.random.Generator | None, views: tuple[int, int] = (1, 1)
) -> dict[str, np.ndarray]:
    if rng is not None:
        video, _ = make_video(example["frames"], spec, rng)
    else:
        video = eval_video(example["frames"], spec, views)
    return {
        "video": video,
        "audio": make_audio(example["audio"], spec),
        "has_audio": np.bool_(example["has_audio"]),
        "label": np.int32(example["label"]),
        "polarity": np.int32(example["polarity"]),
    }


class TrainTransform(grain.transforms.RandomMap):
    """Random TSN offsets, crop position and augmentation; Grain seeds `rng` per element and epoch."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec

    def random_map(self, example, rng: np.random.Generator):
        return {**_clip_fields(example, self.spec, rng), "mask": np.bool_(True)}


class EvalTransform(grain.transforms.Map):
    """Deterministic clips (segment centres, centre crop; or every view) of (example, index, valid) triples."""

    def __init__(self, spec: ClipSpec, views: tuple[int, int] = (1, 1)):
        self.spec, self.views = spec, tuple(views)

    def map(self, element):
        example, index, valid = element
        fields = _clip_fields(example, self.spec, None, self.views)
        return {**fields, "index": np.int32(index), "mask": np.bool_(valid), "video_id": id_bytes(example["video_id"])}


VIDEO_ID_BYTES = 256  # eMotions ids ("Class/<video id>") are far shorter; a longer one is refused.


def id_bytes(video_id: bytes | str) -> np.ndarray:
    """A video id as a fixed-size uint8 array, so that evaluation can gather it across processes with the
    predictions (arrays only); `id_text` reverses it."""
    raw = video_id.encode() if isinstance(video_id, str) else bytes(video_id)
    if len(raw) > VIDEO_ID_BYTES:
        raise ValueError(f"video id longer than {VIDEO_ID_BYTES} bytes: {raw[:80]!r}...")
    return np.frombuffer(raw.ljust(VIDEO_ID_BYTES, b"\0"), np.uint8)


def id_text(row: np.ndarray) -> str:
    return bytes(np.asarray(row, np.uint8)).rstrip(b"\0").decode()


class _Padded:
    """A random-access view of `source` indices [start::step], padded to `length` with masked copies."""

    def __init__(self, source, start: int, step: int, length: int):
        self.source, self.start, self.step, self.length = source, start, step, length
        self.real = len(range(start, len(source), step))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        valid = i < self.real
        index = self.start + self.step * (i if valid else 0)
        return self.source[index], index, valid


def _process_share(cfg: PipelineConfig, process_index: int | None, process_count: int | None) -> tuple[int, int, int]:
    """(this process's index, process count, local batch size); the global batch must split evenly."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if cfg.global_batch_size % count:
        raise ValueError(f"global_batch_size ({cfg.global_batch_size}) must be divisible by {count} processes")
    return index, count, cfg.global_batch_size // count


def _prefetch(ds: grain.MapDataset, cfg: PipelineConfig) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_buffer))
    if cfg.num_workers > 0:
        # Grain reads absl flags when it starts workers; outside `absl.app.run` (tests, notebooks) they
        # are not parsed yet, so parse the defaults without touching the caller's own argv.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS(sys.argv[:1], known_only=True)
        options = grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=cfg.prefetch_buffer)
        it = it.mp_prefetch(options)
    return it


def train_dataset(
    cfg: PipelineConfig,
    split: str = "train",
    source=None,
    process_index: int | None = None,
    process_count: int | None = None,
    start_step: int = 0,
) -> grain.IterDataset:
    """Infinite, reshuffled-each-epoch batches of augmented clips: this process's share of each global batch.

    The local batches of all processes at one step, concatenated in process order, are the global batch
    (see `to_global`). `start_step` is the first global batch to yield: resuming at a checkpoint's step
    continues exactly where the run stopped, whatever the process or worker count then and now.
    """
    source = data_source(cfg, split) if source is None else source
    index, count, local = _process_share(cfg, process_index, process_count)
    if len(source) < cfg.global_batch_size:
        raise ValueError(f"{split}: {len(source)} examples, fewer than a global batch of {cfg.global_batch_size}")
    ds = grain.MapDataset.source(source).shuffle(seed=cfg.seed).repeat(None)
    ds = ds.random_map(TrainTransform(cfg.clip), seed=cfg.seed)
    # Cut the stream into local-sized pieces; global batch k is pieces [k*count, (k+1)*count). Grain
    # reads lazily, so a process decodes only the pieces it takes.
    ds = ds.batch(local, drop_remainder=True)[index::count][start_step:]
    return _prefetch(ds, cfg)


def eval_dataset(
    cfg: PipelineConfig,
    split: str,
    source=None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """One pass over `split`: every example exactly once over all processes, in order, last batch padded.

    All processes yield the same number of batches (a collective step needs every process), so slices
    are padded to a common length; padded entries have `mask` False. `index` is the example's position
    in the split, to map predictions back to `video_id`s.
    """
    source = data_source(cfg, split) if source is None else source
    index, count, local = _process_share(cfg, process_index, process_count)
    per_process = math.ceil(len(source) / count)
    length = math.ceil(per_process / local) * local
    ds = grain.MapDataset.source(_Padded(source, index, count, length)).map(EvalTransform(cfg.clip, cfg.eval_views))
    return _prefetch(ds.batch(local, drop_remainder=True), cfg)


def batch_sharding(mesh: jax.sharding.Mesh, batch_axes: tuple[str, ...] = ("data",)) -> jax.sharding.NamedSharding:
    """Sharding that splits the leading (batch) dimension over `batch_axes` and replicates the rest."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch_axes))


def to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global `jax.Array`s laid out by `sharding`."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def global_batches(iterator: Iterator[dict], sharding: jax.sharding.NamedSharding) -> Iterator[dict[str, jax.Array]]:
    for batch in iterator:
        yield to_global(batch, sharding)


def main(argv: list[str] | None = None) -> None:
    """Streams a few training batches and prints what the model would see, and how fast."""
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser(description="Stream batches from a built dataset.")
    parser.add_argument("--dataset", default="emotions/synthetic")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--num_workers", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = PipelineConfig(
        dataset=args.dataset, data_dir=args.data_dir, global_batch_size=args.batch_size, num_workers=args.num_workers
    )
    it = iter(train_dataset(cfg))
    batch = next(it)
    start = time.perf_counter()
    labels = list(batch["label"])
    for _ in range(args.batches - 1):
        labels += list(next(it)["label"])
    rate = (args.batches - 1) * args.batch_size / max(time.perf_counter() - start, 1e-9)
    shapes = {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}
    print(json.dumps({"shapes": shapes, "labels_seen": np.bincount(labels).tolist(), "clips_per_s": round(rate, 1)}))


if __name__ == "__main__":
    main()

"""The `emotions` TFDS builder: a user's copy of eMotions (or the synthetic stand-in) into ArrayRecord.

Build it with `python -m tfds_emotions.build` (no TensorFlow needed) and read it with
`tfds.data_source('emotions/full', data_dir=...)`. Videos are decoded in a pool of worker processes;
examples come back in key order and TFDS orders them by key hash, so the output files are byte-identical
whatever the number of workers. Anything in the manual directory that does not become an example is
counted in `build_report.json`, written next to the dataset files.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfds_emotions import file_formats, media, sources, splits, synthetic
from tfds_emotions.classes import EMOTIONS_CLASSES, EMOTIONS_POLARITY, POLARITIES, polarity_index
from tfds_emotions.parallel import ordered_map

_DESCRIPTION = """\
eMotions (arXiv 2508.06902): 27,996 short-form videos (Douyin, Kuaishou, TikTok) labelled with one of six
emotions. Each example stores the video's frames (upright, short side 112, JPEG), its MFCC features
(44.1 kHz mono, 32 coefficients) with a `has_audio` flag, the label, its polarity and source metadata.
"""

_MANUAL = """\
Download eMotions yourself (Hugging Face `Conna/eMotions`, academic use only) and pass its folder as
--manual_dir. Accepted layouts: class folders of videos (`<Class>/<id>.mp4`); the authors' processed
layout (`eMotions_imgs/<Class>/<id>/000001.jpg` + `eMotions_mp3/<Class>/<id>.mp3`); parquet shards with
a video-bytes column and a label column. Optional split files: UCF101-style `classInd.txt`,
`trainlist01.txt`, `testlist01.txt`, or an ActivityNet-style JSON.
"""


@dataclasses.dataclass(eq=False)
class EmotionsConfig(tfds.core.BuilderConfig):
    """One way of building the dataset.

    Attributes:
      variant: "full", "balanced" or "test_oriented" (see `splits.assign`).
      synthetic_clips_per_class: > 0 builds the generated stand-in instead of reading a manual dir.
      media_options: decoding and storage options (frames kept, resolution, audio features).
      fractions: train/validation/test fractions used when no split files are given.
      validation_fraction_of_train: share of the train list carved out as validation with split files.
      split_number: which split lists to read (`trainlistNN.txt`, the JSON whose name ends in NN).
      require_split_files: fail instead of drawing a random split (official benchmark splits).
      seed: seed of every sampling draw.
    """

    variant: str = "full"
    synthetic_clips_per_class: int = 0
    media_options: media.MediaOptions = media.MediaOptions()
    fractions: tuple[tuple[str, float], ...] = (("train", 0.7), ("validation", 0.1), ("test", 0.2))
    validation_fraction_of_train: float = 0.125
    split_number: int = 1
    require_split_files: bool = False
    seed: int = 0


Task = tuple[sources.Item, bytes | None, media.MediaOptions, dict[str, str], tuple[str, ...]]  # payload: parquet bytes


def _process(task: Task):
    """Worker: one item to (key, example) or (key, MediaError). Top-level so that it pickles."""
    item, payload, opts, polarity_map, classes = task
    try:
        if item.kind == "frames":
            fields = media.decode_frame_folder(sources.frame_files(item.path), item.audio_path, opts)
        else:
            fields = media.decode_video(payload if item.kind == "parquet" else item.path, opts)
    except media.MediaError as e:
        return item.key, e
    except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not kill a day-long build.
        logging.exception("unexpected error decoding %s", item.key)
        return item.key, media.MediaError("decoder_exception", f"{type(e).__name__}: {e}")
    warnings = fields.pop("_warnings")
    example = {
        "video_id": item.key,
        "label": classes.index(item.label),
        "polarity": polarity_index(item.label, polarity_map),
        **fields,
    }
    return item.key, (example, warnings)


def _tasks(items: Sequence[sources.Item], opts: media.MediaOptions, polarity: dict, classes: tuple) -> Iterator[Task]:
    """The decoding tasks of `items`. Parquet items are visited in row order within each shard, so bytes
    are read one row group at a time and only as fast as the decoders consume them."""
    parquet_rows = collections.defaultdict(list)
    for it in items:
        if it.kind == "parquet":
            parquet_rows[(it.path, it.column)].append(it.row)
    payloads: dict[tuple[str, str], Iterator] = {
        shard: sources.read_parquet_bytes(shard[0], shard[1], rows) for shard, rows in parquet_rows.items()
    }
    for it in sorted(items, key=lambda it: (it.kind != "parquet", it.path, it.row, it.key)):
        payload = None
        if it.kind == "parquet":
            row, payload = next(payloads[(it.path, it.column)])
            assert row == it.row, (row, it.row)
        yield it, payload, opts, polarity, classes


ROWS_RELEASE_NOTE = (
    "Frames carry a restart marker after every 16-pixel row, so a crop decodes only its rows (same pixels "
    "as 1.0.0); audio and timestamps are stored as raw bytes."
)


class _Tally:
    """What one split's build did with each of its items: the counts and skips of `build_report.json`.

    Tallies of parts of a split (Beam workers) merge into the tally of the whole.
    """

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.skipped: list[dict[str, str]] = []

    def add(self, key: str, result) -> bool:
        """Counts one decoding result; True when it is an example."""
        if isinstance(result, media.MediaError):
            self.counts[f"skipped_{result.reason}"] += 1
            self.skipped.append({"key": key, "reason": result.reason, "detail": result.detail})
            logging.warning("skipping %s: %s", key, result)
            return False
        example, warnings = result
        self.counts["examples"] += 1
        self.counts["no_audio"] += not example["has_audio"]
        self.counts.update(warnings)
        return True

    def merge(self, other: _Tally) -> _Tally:
        self.counts.update(other.counts)
        self.skipped.extend(other.skipped)
        return self

    def report(self, split: str, num_items: int) -> dict[str, Any]:
        """The split's entry of the report; a split none of whose videos decoded is an error."""
        if not self.counts["examples"]:
            raise ValueError(f"split {split!r}: none of its {num_items} videos could be decoded: {self.skipped[:3]}")
        return {"counts": dict(sorted(self.counts.items())), "skipped": sorted(self.skipped, key=lambda s: s["key"])}


class Emotions(tfds.core.GeneratorBasedBuilder):
    """eMotions short-form video emotion dataset (six classes), and a synthetic stand-in."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: frames as JPEG at short side 112, MFCC [T, 32].",
        "2.0.0": ROWS_RELEASE_NOTE,
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    CLASSES: tuple[str, ...] = EMOTIONS_CLASSES
    POLARITY: dict[str, str] = EMOTIONS_POLARITY
    DESCRIPTION = _DESCRIPTION
    HOMEPAGE = "https://arxiv.org/abs/2508.06902"
    BUILDER_CONFIGS = [
        EmotionsConfig(name="full", description="All videos; seeded stratified 70/10/20 split."),
        EmotionsConfig(name="balanced", variant="balanced", description="Category-balanced (our reconstruction)."),
        EmotionsConfig(
            name="test_oriented", variant="test_oriented", description="Class-balanced test set (our reconstruction)."
        ),
        EmotionsConfig(
            name="synthetic",
            version="2.0.0",
            release_notes={
                "1.1.0": "A larger disc kept near the middle, so every crop shows the visual cue.",
                "2.0.0": ROWS_RELEASE_NOTE,
            },
            synthetic_clips_per_class=50,
            description="300 generated clips whose labels need both audio and video; for demos and tests.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "full"

    def __init__(
        self,
        *,
        num_workers: int | None = None,
        video_column: str | None = None,
        label_column: str | None = None,
        id_column: str | None = None,
        **kwargs: Any,
    ):
        """Args beyond TFDS's: worker processes (default: all cores) and parquet column names."""
        self._num_workers = num_workers or os.cpu_count() or 1
        self._columns = {"video_column": video_column, "label_column": label_column, "id_column": id_column}
        self._report: dict[str, Any] = {}
        self._beam = False
        super().__init__(**kwargs)

    def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        """`tfds.load` on an ArrayRecord build reads its TFRecord copy (see `file_formats`)."""
        read_config = file_formats.tf_data_read_config(self.info, read_config or tfds.ReadConfig())
        return super()._as_dataset(split, decoders=decoders, read_config=read_config, shuffle_files=shuffle_files)

    def _info(self) -> tfds.core.DatasetInfo:
        opts = self.builder_config.media_options
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "video_id": tfds.features.Text(doc="Class/id, unique within the dataset."),
                    "label": tfds.features.ClassLabel(names=self.CLASSES),
                    "polarity": tfds.features.ClassLabel(names=POLARITIES),
                    # JPEG bytes encoded by the builder itself, so neither build nor read needs TensorFlow;
                    # a restart marker ends every MCU row (see `jpeg_rows`).
                    "frames": tfds.features.Sequence(tfds.features.Scalar(np.object_), doc="JPEG frames."),
                    # Raw bytes: read back with one np.frombuffer instead of a Python float per value
                    # (2 ms per read of a 20 s video's MFCCs as a float list).
                    "timestamps": tfds.features.Tensor(
                        shape=(None,), dtype=np.float32, encoding=tfds.features.Encoding.BYTES, doc="Frame times (s)."
                    ),
                    "audio": tfds.features.Tensor(
                        shape=(None, opts.audio_dim),
                        dtype=np.float32,
                        encoding=tfds.features.Encoding.BYTES,
                        doc=f"{opts.audio_features} [T, D], untiled.",
                    ),
                    "has_audio": tfds.features.Scalar(np.bool_),
                    "source": tfds.features.FeaturesDict(
                        {
                            "fps": np.float32,
                            "num_frames": np.int32,
                            "duration": np.float32,
                            "width": np.int32,
                            "height": np.int32,
                        }
                    ),
                }
            ),
            supervised_keys=None,
            homepage=self.HOMEPAGE,
        )

    # -----------------------------------------------------------------------------------------------------

    def _source_root(self, dl_manager: tfds.download.DownloadManager) -> str:
        cfg = self.builder_config
        if cfg.synthetic_clips_per_class:
            root = os.path.join(
                dl_manager.download_dir, f"emotions_synthetic_{cfg.version}_{cfg.synthetic_clips_per_class}_{cfg.seed}"
            )
            return synthetic.write_dataset(root, cfg.synthetic_clips_per_class, cfg.seed)
        return os.fspath(dl_manager.manual_dir)

    def _discover(self, root: str) -> tuple[list[sources.Item], list[sources.Skip]]:
        processed = sources.find_processed_layout(root)
        if processed is not None:
            items, skips = sources.discover_frame_folders(*processed, self.CLASSES)
        elif any(p.endswith(".parquet") for _, _, fs in os.walk(root) for p in fs):
            items, skips = sources.discover_parquet(root, self.CLASSES, **self._columns)
        else:
            items, skips = sources.discover_videos(root, self.CLASSES)
        items, dup = splits.dedupe(sorted(items, key=lambda it: (it.key, it.path, it.row)))
        if not items:
            raise ValueError(f"no usable videos found under {root} (classes: {list(self.CLASSES)})")
        return items, skips + dup

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        root = self._source_root(dl_manager)
        items, skips = self._discover(root)
        lists = sources.read_split_files(root, items, self.CLASSES, cfg.split_number)
        if lists is None and cfg.require_split_files:
            raise ValueError(
                f"{self.name}/{cfg.name} needs the benchmark's split files for split {cfg.split_number} under "
                f"{root}: trainlist{cfg.split_number:02d}.txt + testlist{cfg.split_number:02d}.txt, an "
                "ActivityNet-style JSON, or train/ and test/ folders (see the README)"
            )
        by_split, more = splits.assign(
            items,
            lists,
            variant=cfg.variant,
            fractions=dict(cfg.fractions),
            validation_fraction_of_train=cfg.validation_fraction_of_train,
            seed=cfg.seed,
        )
        self._report = {
            "config": cfg.name,
            "source": root,
            "split_files": lists.source if lists else None,
            "discovered": len(items),
            "not_used": _summarise(skips + more),
            "splits": {},
        }
        logging.info("%s: %d videos found, %d not used", cfg.name, len(items), len(skips) + len(more))
        empty = _empty_splits(by_split, items, lists, dict(cfg.fractions), cfg.validation_fraction_of_train)
        for name, why in empty.items():
            logging.warning("%s: the %s split is empty: %s; it is not written", cfg.name, name, why)
        self._report["empty_splits"] = empty
        if self._beam:
            from tfds_emotions import beam_build

            return {name: beam_build.split_transform(self, name, its) for name, its in by_split.items() if its}
        return {name: self._generate_examples(name, its) for name, its in by_split.items() if its}

    def _task_args(self) -> tuple[media.MediaOptions, dict[str, str], tuple[str, ...]]:
        return self.builder_config.media_options, dict(self.POLARITY), tuple(self.CLASSES)

    def _generate_examples(self, split: str, items: Sequence[sources.Item]):
        """Decodes `items` in a local pool of worker processes; examples come back in key order."""
        tally = _Tally()
        workers = min(self._num_workers, len(items))
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
        try:
            tasks = _tasks(items, *self._task_args())
            for key, result in ordered_map(_process, tasks, pool, window=4 * workers):
                if tally.add(key, result):
                    yield key, result[0]
        finally:
            if pool is not None:
                pool.terminate()
        self._report["splits"][split] = tally.report(split, len(items))
        self._write_report()

    # Apache Beam (see `beam_build`): chosen by passing beam options or a runner to the build.

    def _download_and_prepare(self, dl_manager, download_config):
        self._beam = download_config.beam_runner is not None or download_config.beam_options is not None
        return super()._download_and_prepare(dl_manager, download_config)

    def _process_pipeline_result(self, pipeline_result) -> None:
        """After the Beam pipeline: the splits' report parts, written by the workers, join the report."""
        from tfds_emotions import beam_build

        self._report["splits"].update(beam_build.collect_reports(os.fspath(self.data_path)))
        self._write_report()

    def _write_report(self) -> None:
        path = epath.Path(self.data_path) / "build_report.json"  # epath: data_dir may be a bucket.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._report, indent=1, sort_keys=True))


def _empty_splits(
    by_split: dict[str, list], items: Sequence[sources.Item], lists, fractions: dict, validation_fraction: float
) -> dict[str, str]:
    """{split: why it came out empty}. TFDS writes no file for an empty split, so without this a small
    source silently builds a dataset without validation or test, found out only when a run needs it."""
    per_class = collections.Counter(it.key.split("/", 1)[0] for it in items)
    sizes = f"{min(per_class.values())}-{max(per_class.values())}" if per_class else "0"
    out = {}
    for name, its in by_split.items():
        if its:
            continue
        if lists is not None and name == "test":
            out[name] = f"the split files ({lists.source}) name no test video that was found"
        else:
            share = validation_fraction if lists is not None and name == "validation" else fractions.get(name, 0)
            base = "of each class's train-list videos" if lists is not None else "of each class"
            out[name] = (
                f"its share ({share:g} {base}) rounds to 0 videos in every class ({sizes} videos per class "
                "were found); add videos"
            )
    return out


def _summarise(skips: Sequence[sources.Skip]) -> dict[str, Any]:
    counts = collections.Counter(s.reason for s in skips)
    return {"counts": dict(sorted(counts.items())), "items": [dataclasses.asdict(s) for s in skips]}

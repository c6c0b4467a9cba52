r"""Builds the `emotions` dataset without TensorFlow.

  python -m tfds_emotions.build --config=full --manual_dir=RAW --data_dir=DATA
  python -m tfds_emotions.build --config=synthetic --data_dir=DATA

Then `tfds.data_source('emotions/full', data_dir=DATA)`. With `--file_format=tfrecord` (needs
TensorFlow to read) `tfds.load('emotions/full', data_dir=DATA)` works as well.

On Apache Beam (`pip install -e ".[beam]"`), with the same output:

  python -m tfds_emotions.build --config=full --manual_dir=RAW --data_dir=DATA \
      --beam_pipeline_options=direct_num_workers=0,direct_running_mode=multi_processing  # every core here
  python -m tfds_emotions.build ... --beam_pipeline_options=runner=DataflowRunner,project=P,region=R,...
"""

from __future__ import annotations

import json
import os

from absl import flags, logging
from etils import epath

import tfds_emotions  # noqa: F401 - registers the builders.
from avcanet_jax import cli
from avcanet_jax.cli import UserError
from tfds_emotions import file_formats

DATASETS = ("emotions", "video_emotion8", "ekman6")


def build(
    config: str,
    data_dir: str,
    manual_dir: str | None = None,
    *,
    dataset: str = "emotions",
    file_format: str = "array_record",
    num_workers: int | None = None,
    overwrite: bool = False,
    beam_pipeline_options: str | None = None,
    **builder_kwargs,
):
    """Builds (or reuses) a dataset and returns its builder; the library form of this command.

    `file_format` may list several formats, e.g. "array_record,tfrecord": the dataset is built in the
    first, and the others are added as copies that TFDS knows of (`file_formats`), so one data dir
    serves `tfds.data_source` and `tfds.load`. On an existing build, only the missing copies are made.

    `beam_pipeline_options`, as `tfds build` takes them ("runner=DataflowRunner,project=...,..."), runs
    the decoding on Apache Beam instead of the local worker pool; "" runs it on Beam's default runner.
    """
    import tensorflow_datasets as tfds

    file_format, *more_formats = file_format.split(",")
    try:
        builder = tfds.builder(
            f"{dataset}/{config}", data_dir=data_dir, file_format=file_format, num_workers=num_workers, **builder_kwargs
        )
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UserError(f"--dataset={dataset}: not a dataset of this package ({', '.join(DATASETS)})") from e
    except ValueError as e:
        if "not found" not in str(e):
            raise
        known = [bc.name for bc in tfds.builder_cls(dataset).BUILDER_CONFIGS]
        raise UserError(f"--config={config}: {dataset} has no such config; known: {', '.join(known)}") from e
    needs_manual = not getattr(builder.builder_config, "synthetic_clips_per_class", 0)
    built = (epath.Path(builder.data_path) / "dataset_info.json").exists()
    if needs_manual and not built and not (manual_dir and os.path.isdir(manual_dir)):
        # Checked before TFDS starts, which would leave downloads/ and .config/ behind in data_dir.
        where = f"--manual_dir={manual_dir}: no such directory" if manual_dir else "--manual_dir is required"
        raise UserError(f"{where}; {dataset}/{config} is built from your downloaded copy of the dataset")
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    beam_options = None
    if beam_pipeline_options is not None:
        beam = tfds.core.lazy_imports.apache_beam
        beam_options = beam.options.pipeline_options.PipelineOptions(
            flags=[f"--{opt}" for opt in beam_pipeline_options.split(",") if opt]
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, download_mode=mode, beam_options=beam_options
        )
    )
    for extra in more_formats:
        if file_formats.add_file_format(builder, extra):
            logging.info("wrote a %s copy of %s for tfds.load", extra, builder.info.full_name)
    return builder


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program, so that importing `build` (as the trainer
    does for the demo data) never clashes with the importer's own absl flags."""
    flags.DEFINE_string("config", "full", "Builder config: full, balanced, test_oriented, synthetic.")
    flags.DEFINE_string("dataset", "emotions", "Registered builder name.")
    flags.DEFINE_string("manual_dir", None, "The user's copy of the dataset.")
    flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"), "Output root.")
    flags.DEFINE_string(
        "file_format", "array_record",
        "array_record (for tfds.data_source and Grain), tfrecord (for tfds.load), or array_record,tfrecord for "
        "both in one data dir (the TFRecord copy needs TensorFlow); on an existing build, adds the missing copy.",
    )  # fmt: skip
    flags.DEFINE_integer("num_workers", None, "Decoding processes (default: all cores).")
    flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.")
    flags.DEFINE_string(
        "beam_pipeline_options", None,
        "Build on Apache Beam with these options, comma-separated as for `tfds build`, e.g. "
        "direct_num_workers=0,direct_running_mode=multi_processing (all local cores) or runner=DataflowRunner,...",
    )  # fmt: skip
    flags.DEFINE_string("video_column", None, "Parquet column with video bytes (auto-detected).")
    flags.DEFINE_string("label_column", None, "Parquet column with the label (auto-detected).")
    flags.DEFINE_string("id_column", None, "Parquet column with the video id (auto-detected).")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    formats = FLAGS.file_format.split(",")
    if not set(formats) <= {"array_record", "tfrecord"} or len(set(formats)) != len(formats):
        raise UserError(f"--file_format={FLAGS.file_format}: use array_record, tfrecord or array_record,tfrecord")
    if formats[1:] and formats[0] != "array_record":
        raise UserError("--file_format: a second format can be added to an array_record build only")
    builder = build(
        FLAGS.config,
        FLAGS.data_dir,
        FLAGS.manual_dir,
        dataset=FLAGS.dataset,
        file_format=FLAGS.file_format,
        num_workers=FLAGS.num_workers,
        overwrite=FLAGS.overwrite,
        beam_pipeline_options=FLAGS.beam_pipeline_options,
        video_column=FLAGS.video_column,
        label_column=FLAGS.label_column,
        id_column=FLAGS.id_column,
    )
    report_path = os.path.join(os.fspath(builder.data_path), "build_report.json")
    for name, why in _report(report_path).get("empty_splits", {}).items():
        logging.warning("no %s split: %s", name, why)
    summary = {name: split.num_examples for name, split in builder.info.splits.items()}
    logging.info("built %s at %s: %s", builder.info.full_name, builder.data_path, summary)
    report = _report(report_path)
    if report:
        print(
            json.dumps(
                {
                    "dataset": builder.info.full_name,
                    "path": os.fspath(builder.data_path),
                    "examples": summary,
                    "not_used": report["not_used"]["counts"],
                    "per_split": {s: r["counts"] for s, r in report["splits"].items()},
                    "empty_splits": report.get("empty_splits", {}),
                }
            )
        )


def _report(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

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

from absl import app, flags, logging

import tfds_emotions  # noqa: F401 - registers the builders.


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

    `beam_pipeline_options`, as `tfds build` takes them ("runner=DataflowRunner,project=...,..."), runs
    the decoding on Apache Beam instead of the local worker pool; "" runs it on Beam's default runner.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(
        f"{dataset}/{config}", data_dir=data_dir, file_format=file_format, num_workers=num_workers, **builder_kwargs
    )
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
    return builder


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program, so that importing `build` (as the trainer
    does for the demo data) never clashes with the importer's own absl flags."""
    flags.DEFINE_string("config", "full", "Builder config: full, balanced, test_oriented, synthetic.")
    flags.DEFINE_string("dataset", "emotions", "Registered builder name.")
    flags.DEFINE_string("manual_dir", None, "The user's copy of the dataset.")
    flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"), "Output root.")
    flags.DEFINE_enum("file_format", "array_record", ["array_record", "tfrecord"], "Output format.")
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
    summary = {name: split.num_examples for name, split in builder.info.splits.items()}
    logging.info("built %s at %s: %s", builder.info.full_name, builder.data_path, summary)
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as fh:
            report = json.load(fh)
        print(
            json.dumps(
                {
                    "dataset": builder.info.full_name,
                    "path": os.fspath(builder.data_path),
                    "examples": summary,
                    "not_used": report["not_used"]["counts"],
                    "per_split": {s: r["counts"] for s, r in report["splits"].items()},
                }
            )
        )


if __name__ == "__main__":
    _define_flags()
    app.run(main)

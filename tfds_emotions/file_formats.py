"""One built dataset readable both ways: `tfds.data_source` (random access: ArrayRecord) for Grain, and
`tfds.load` (tf.data: TFRecord) for TensorFlow users.

TFDS records the formats a dataset directory holds besides its own (`alternative_file_formats` in
`dataset_info.json`) and lets both APIs pick the one they can read, but its converter
(`tfds convert_format`) reads through tf.data and so cannot start from ArrayRecord. `add_file_format`
copies the serialized examples shard by shard, in order, into the other format's files next to the
originals and records the format; the examples are the same bytes, so both APIs see the same dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

from etils import epath
from tensorflow_datasets.core import dataset_info, file_adapters
from tensorflow_datasets.core.utils import py_utils

_READ_CHUNK = 256  # Records read from an ArrayRecord shard at a time (a few MB of JPEG frames each).


def _array_record_examples(path: epath.Path) -> Iterator[tuple[int, bytes]]:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(path), "readahead_buffer_size:0")
    try:
        n = reader.num_records()
        for start in range(0, n, _READ_CHUNK):
            for i, record in enumerate(reader.read(range(start, min(start + _READ_CHUNK, n)))):
                yield start + i, record
    finally:
        reader.close()


def _formats(info) -> set[str]:
    """The formats the dataset directory holds. Read from the proto: TFDS 4.9.10 restores
    `alternative_file_formats` from dataset_info.json into it, but not into `available_file_formats()`."""
    return dataset_info.available_file_formats(info.as_proto)


def add_file_format(builder, file_format: str) -> bool:
    """Writes `builder`'s built ArrayRecord dataset again as `file_format` (only "tfrecord" is needed: the
    reverse has nothing to gain) and records it in `dataset_info.json`. Returns False when the dataset
    already holds that format."""
    out_format = file_adapters.FileFormat.from_value(file_format)
    info = builder.info
    if out_format.value in _formats(info):
        return False
    if info.file_format != file_adapters.FileFormat.ARRAY_RECORD or out_format != file_adapters.FileFormat.TFRECORD:
        raise ValueError(
            f"can add tfrecord to an array_record build only, not {out_format.value} to {info.file_format}"
        )
    writer = file_adapters.ADAPTER_FOR_FORMAT[out_format]
    for split in info.splits.values():
        template = split.filename_template.replace(filetype_suffix=out_format.file_suffix)
        outputs = sorted(template.sharded_filepaths(split.num_shards))
        for source, target in zip(split.filepaths, outputs, strict=True):
            with py_utils.incomplete_file(target) as tmp:
                writer.write_examples(tmp, _array_record_examples(source))
    info.add_alternative_file_format(out_format)
    info.write_to_directory(builder.data_path)
    return True


def tf_data_read_config(info, read_config):
    """The read config for tf.data: an ArrayRecord build that also holds TFRecord files is read from
    those, so that `tfds.load` works on the default build (TFDS would otherwise try to read ArrayRecord
    through tf.data and fail). Switches `info`'s split files to that format, as TFDS's own `data_source`
    does in the other direction."""
    tfrecord = file_adapters.FileFormat.TFRECORD
    wanted = read_config.file_format and file_adapters.FileFormat.from_value(read_config.file_format)
    if wanted not in (None, tfrecord) or info.file_format == tfrecord:
        return read_config
    if tfrecord.value not in _formats(info):
        return read_config
    info.set_file_format(tfrecord, override=True, override_if_initialized=True)
    return read_config.replace(file_format=tfrecord)

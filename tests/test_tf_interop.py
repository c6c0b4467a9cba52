"""TFDS interop: the build needs no TensorFlow, a tfrecord build loads with `tfds.load`, and one data dir
built as array_record,tfrecord serves both `tfds.data_source` and `tfds.load` with the same examples."""

from __future__ import annotations

import subprocess
import sys

import media_factory as mf
import pytest

_NO_TF = """
import sys
from tfds_emotions import build
b = build.build("full", sys.argv[1], sys.argv[2], num_workers=1)
import tensorflow_datasets as tfds
src = tfds.data_source("emotions/full", data_dir=sys.argv[1])
print(sum(len(s) for s in src.values()), src["train"][0]["video_id"])
# TensorFlow may be installed (the tf extra), but neither building nor reading may have imported it.
print("tensorflow" in sys.modules)
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("raw"))
    mf.good_clips(root, per_class=2)
    return root


def test_build_and_read_without_tensorflow(raw, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _NO_TF, str(tmp_path), raw], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    count, _, tf_imported = " ".join(out.stdout.splitlines()[-2:]).split()
    assert count == "12" and tf_imported == "False"


def test_tfrecord_build_loads_with_tfds_load(raw, tmp_path):
    tf = pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds

    from tfds_emotions import build

    builder = build.build("full", str(tmp_path), raw, file_format="tfrecord", num_workers=1)
    ds = tfds.load("emotions/full", split="train", data_dir=str(tmp_path))
    n = 0
    for ex in ds:
        assert ex["frames"].dtype == tf.string and ex["frames"].shape[0] >= 16
        assert tf.io.decode_jpeg(ex["frames"][0]).shape[-1] == 3
        assert ex["audio"].shape[-1] == 32
        n += 1
    assert n == builder.info.splits["train"].num_examples > 0


def test_one_build_serves_data_source_and_tfds_load(raw, tmp_path):
    pytest.importorskip("tensorflow")  # Writing the TFRecord copy uses TensorFlow's writer.
    import tensorflow_datasets as tfds

    from tfds_emotions import build

    builder = build.build("full", str(tmp_path), raw, num_workers=1)  # The default: ArrayRecord only.
    with pytest.raises(NotImplementedError, match="not implemented for ArrayRecord"):
        tfds.load("emotions/full", split="train", data_dir=str(tmp_path))
    build.build("full", str(tmp_path), raw, file_format="array_record,tfrecord")  # Adds the copy, no rebuild.
    for split in builder.info.splits:
        source = tfds.data_source("emotions/full", split=split, data_dir=str(tmp_path))
        random_access = {ex["video_id"]: ex["frames"] for ex in (source[i] for i in range(len(source)))}
        loaded = {ex["video_id"]: list(ex["frames"]) for ex in tfds.as_numpy(
            tfds.load("emotions/full", split=split, data_dir=str(tmp_path), shuffle_files=False)
        )}  # fmt: skip
        assert loaded == random_access and len(loaded) == len(source)

"""A split of a built dataset as the input pipeline reads it: each record parsed only as far as a clip needs.

`tfds.data_source` turns a record into numpy: for a 20 s video that is 500 JPEG frames copied into 500
new bytes objects, 3.6 ms per read, of which a training clip uses 128 frames. Here the record's raw
bytes (TFDS's `RAW_BYTES` mode, same ArrayRecord files) are parsed into the tf.Example message alone
(0.4 ms); a frame becomes a bytes object only when a clip takes it. The fields are the ones TFDS
decodes (`test_records.py` compares them for every example).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import numpy as np

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h).


def keep_freed_memory() -> None:
    """Lets this process reuse the memory of one record for the next instead of faulting in new pages.

    glibc's malloc gives a buffer of a few MB its own mmap and unmaps it when it is freed (or trims the
    heap it came from), so each record read touches brand-new pages: measured here, 3,400 page faults
    per read of a 3.9 MB record, and 8.4 ms per read instead of 3.7 ms. Serving such buffers from the
    heap (below 32 MiB) and keeping up to 128 MiB of freed memory makes the steady state fault-free.
    Does nothing where the C library has no `mallopt` (macOS, musl).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 128 << 20)


class ClipRecords:
    """Random access to a split's examples for clips: `frames` (a lazy sequence of JPEG bytes), `audio`
    ([T, D] float32, read-only), `has_audio`, `label`, `polarity` and `video_id`."""

    def __init__(self, dataset: str, split: str, data_dir: str | None = None):
        import tensorflow_datasets as tfds

        import tfds_emotions  # noqa: F401 - registers the builders so TFDS can read their features.

        self.raw = tfds.data_source(
            dataset, split=split, data_dir=data_dir, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
        self.audio_dim = self.raw.dataset_info.features["audio"].shape[-1]
        keep_freed_memory()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        keep_freed_memory()  # In each Grain worker process that receives the source.

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from tensorflow_datasets.proto import tf_example_pb2

        feature = tf_example_pb2.Example.FromString(self.raw[index]).features.feature
        return {
            "frames": feature["frames"].bytes_list.value,
            "audio": np.frombuffer(feature["audio"].bytes_list.value[0], np.float32).reshape(-1, self.audio_dim),
            "has_audio": bool(feature["has_audio"].int64_list.value[0]),
            "label": int(feature["label"].int64_list.value[0]),
            "polarity": int(feature["polarity"].int64_list.value[0]),
            "video_id": feature["video_id"].bytes_list.value[0],
        }

    @property
    def dataset_info(self):
        return self.raw.dataset_info

"""The pipeline's lazy reading of a split: the fields TFDS decodes, without the frames a clip leaves."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow_datasets as tfds

from avcanet_jax.records import ClipRecords


def test_fields_equal_tfds_decoding_for_every_example(tiny_dataset):
    for split in ("train", "test"):
        ours = ClipRecords("emotions/full", split, tiny_dataset)
        theirs = tfds.data_source("emotions/full", split=split, data_dir=tiny_dataset)
        assert len(ours) == len(theirs) > 0
        for i in range(len(ours)):
            a, b = ours[i], theirs[i]
            assert list(a["frames"]) == list(b["frames"])
            np.testing.assert_array_equal(a["audio"], b["audio"])
            assert a["audio"].dtype == np.float32 and a["audio"].shape == b["audio"].shape
            for key in ("has_audio", "label", "polarity", "video_id"):
                assert a[key] == b[key], key


def test_pickles_for_worker_processes(tiny_dataset):
    source = ClipRecords("emotions/full", "test", tiny_dataset)
    again = pickle.loads(pickle.dumps(source))
    assert again[2]["video_id"] == source[2]["video_id"] and list(again[2]["frames"]) == list(source[2]["frames"])


def test_reading_large_records_reuses_memory(tmp_path):
    """A fresh process faults in new pages for every read of a 4 MB record (glibc unmaps or trims the
    buffers in between); after `keep_freed_memory` steady-state reads fault almost none."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "big.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    rng = np.random.default_rng(0)
    for _ in range(4):
        writer.write(rng.integers(0, 200, 4 << 20, dtype=np.uint8).tobytes())  # zstd-compressible, like records.
    writer.close()

    def faults_per_read(tuned: bool) -> float:
        script = textwrap.dedent(f"""
            import resource
            from array_record.python.array_record_module import ArrayRecordReader
            from avcanet_jax.records import keep_freed_memory
            if {tuned}:
                keep_freed_memory()
            reader = ArrayRecordReader({path!r}, "readahead_buffer_size:0")
            for i in range(8):
                reader.read([i % 4])
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for i in range(40):
                reader.read([i % 4])
            print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
        """)
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
        return float(run.stdout)

    plain, tuned = faults_per_read(False), faults_per_read(True)
    assert plain > 512 and tuned < 64, (plain, tuned)  # A 4 MB record spans 1,024 pages.

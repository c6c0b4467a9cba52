"""Shared fixtures. Eight fake CPU devices stand in for an accelerator mesh (set before JAX starts)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same steps in several runs (a run, its stopped twin, the resumed twin): a per-session
# persistent compilation cache turns the repeats into cache hits.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="avcanet_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import media_factory as mf  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """data_dir of an `emotions/full` build over 5 synthetic clips per class (30 videos)."""
    from tfds_emotions import build

    raw = str(tmp_path_factory.mktemp("tiny_raw"))
    mf.good_clips(raw, per_class=5)
    data_dir = str(tmp_path_factory.mktemp("tiny_data"))
    build.build("full", data_dir, raw, num_workers=1)
    return data_dir

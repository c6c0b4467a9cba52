"""Shared fixtures. Eight fake CPU devices stand in for an accelerator mesh (set before JAX starts)."""

from __future__ import annotations

import os
import tempfile

# LLVM at -O0 halves XLA's CPU compile times (the suite is mostly compilation); results are unchanged,
# as XLA's CPU code is compiled without fast-math at any level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same steps in several runs (a run, its stopped twin, the resumed twin): a per-session
# persistent compilation cache turns the repeats into cache hits.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="avcanet_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import media_factory as mf  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> str:
    """5 synthetic clips per class (30 videos) in class folders: `<root>/<Class>/v<k>.mp4`."""
    raw = str(tmp_path_factory.mktemp("tiny_raw"))
    mf.good_clips(raw, per_class=5)
    return raw


@pytest.fixture(scope="session")
def tiny_dataset(tiny_raw, tmp_path_factory) -> str:
    """data_dir of an `emotions/full` build of `tiny_raw`: train 24, test 6, no validation."""
    from tfds_emotions import build

    data_dir = str(tmp_path_factory.mktemp("tiny_data"))
    build.build("full", data_dir, tiny_raw, num_workers=1)
    return data_dir


def tiny_train_config(data_dir: str, **overrides):
    """The demo model on `tiny_dataset` over a (4, 2) mesh: 3 steps per epoch, 2 epochs."""
    from configs import demo

    c = demo.get_config()
    c.data.dataset = "emotions/full"
    c.data.data_dir = data_dir
    c.batch_size = 8
    c.num_epochs = 2
    c.log_every_steps = 1
    c.checkpoint_every_steps = 1000
    c.mesh.axes = {"data": 4, "fsdp": 2, "tensor": 1}
    c.select_on_validation = False  # The tiny build has no validation split.
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def tiny_train_flags(data_dir: str) -> list[str]:
    """`tiny_train_config` as `python -m avcanet_jax.main` flags (with `--config=configs/demo.py`)."""
    return [
        "--config=configs/demo.py", f"--config.data.data_dir={data_dir}", "--config.data.dataset=emotions/full",
        "--config.batch_size=8", "--config.num_epochs=2", "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=1000", "--config.mesh.axes.data=4", "--config.mesh.axes.fsdp=2",
        "--config.select_on_validation=False",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory) -> tuple[str, dict]:
    """(workdir, test metrics) of an uninterrupted training run with `tiny_train_config`."""
    from avcanet_jax import train

    workdir = str(tmp_path_factory.mktemp("trained"))
    return workdir, train.train_and_evaluate(tiny_train_config(tiny_dataset), workdir)


# Modules whose tests read the session's `trained` run (about a minute and a half to make).
TRAINED_MODULES = ("test_multiprocess.py", "test_predict.py", "test_train.py", "test_workdir.py")


@pytest.hookimpl(optionalhook=True)  # Also runs without xdist (`-p no:xdist`).
def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (`-n 2`, set in pyproject.toml): one work unit per test module, so that module
    fixtures are made once, and the modules that read the `trained` run share one worker (and the run);
    the largest unit starts first. (xdist's own `--dist loadgroup` marks do not take effect under
    pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "trained" if os.path.basename(module) in TRAINED_MODULES else module

    return ByModule(config, log)

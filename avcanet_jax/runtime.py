"""Process-level set-up shared by the command-line programs (`main`, `protocol`): multi-process start,
quieter library logging, and the demo data made on first use."""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os

import jax
from absl import logging

# Variables that launchers set when a job spans several processes (value: how to read the count).
_CLUSTER_HINTS = {
    "JAX_COORDINATOR_ADDRESS": None,  # Set by hand or by launch/ scripts.
    "SLURM_NTASKS": int,
    "OMPI_COMM_WORLD_SIZE": int,
    "TPU_WORKER_HOSTNAMES": lambda v: len(v.split(",")),  # Multi-host TPU VM slices.
}


def several_processes() -> bool:
    """Whether the environment describes a job of more than one process."""
    for name, count in _CLUSTER_HINTS.items():
        value = os.environ.get(name)
        if value and (count is None or count(value) > 1):
            return True
    return False


class _QuietLibraries:
    """Drops the INFO lines Orbax writes for every save and restore (dozens per checkpoint), which would
    bury the training progress; their warnings and errors still show."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def _tpu_chips() -> int:
    """TPU chips on this machine's PCI bus (JAX's own check); on an unknown JAX, assume there may be some."""
    try:
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0]
    except (ImportError, AttributeError, OSError):
        return 1


def leave_out_absent_tpus() -> None:
    """On a machine without TPU chips, keeps JAX from initialising libtpu (installed by the `tpu` and
    `test` extras). Initialising it fails there anyway, after printing a page of warnings, and takes
    libtpu's machine-wide lock (`/tmp/libtpu_lockfile`), which stops an ahead-of-time TPU compile
    (`avcanet_jax.aot`) that another process starts. Must run before JAX picks its backends; an explicit
    `JAX_PLATFORMS` (or `JAX_FORCE_TPU_INIT`) is left as the user set it."""
    if jax.config.jax_platforms or "JAX_FORCE_TPU_INIT" in os.environ:
        return
    if importlib.util.find_spec("libtpu") is None or _tpu_chips():
        return
    gpu_plugins = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin")
    gpus = [name for name in gpu_plugins if importlib.util.find_spec(name) is not None]
    platform = "cuda" if any("cuda" in g for g in gpus) else "rocm" if gpus else None
    jax.config.update("jax_platforms", f"{platform},cpu" if platform and _gpu_visible(platform) else "cpu")


def _gpu_visible(platform: str) -> bool:
    return os.path.exists("/dev/nvidiactl") if platform == "cuda" else os.path.exists("/dev/kfd")


def start(distributed: str = "auto") -> None:
    """Call first in a program: logging filter, no libtpu where there are no TPUs, then
    `jax.distributed.initialize()` when wanted ("on"), or when the environment shows several processes
    ("auto")."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
    leave_out_absent_tpus()
    if distributed == "on" or (distributed == "auto" and several_processes()):
        kwargs = {}
        if "JAX_NUM_PROCESSES" in os.environ:  # A hand-made cluster: JAX_COORDINATOR_ADDRESS=host:port too.
            kwargs = {
                "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                "process_id": int(os.environ["JAX_PROCESS_ID"]),
            }
        jax.distributed.initialize(**kwargs)
    if jax.process_index() != 0:  # Only process 0 logs progress; the others still report problems.
        logging.set_verbosity(logging.WARNING)
    logging.info(
        "process %d of %d, %d local of %d devices (%s)", jax.process_index(), jax.process_count(),
        jax.local_device_count(), jax.device_count(), jax.devices()[0].platform,
    )  # fmt: skip


def ensure_data(dataset: str, data_dir: str | None) -> None:
    """The demo's synthetic dataset is generated on first use; real datasets must be built by the user."""
    import tensorflow_datasets as tfds

    import tfds_emotions  # noqa: F401
    from tfds_emotions import build

    name, _, config = dataset.partition("/")
    if config == "synthetic" and not tfds.builder(dataset, data_dir=data_dir).is_prepared():
        if jax.process_index() == 0:
            logging.info("building %s (first run only)", dataset)
            build.build(config, data_dir or os.path.expanduser("~/tensorflow_datasets"), dataset=name)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("synthetic dataset built")

"""Stopping on SIGTERM at a step every process agrees on.

Schedulers announce the end of a job with SIGTERM: TPU VM maintenance and spot preemption, SLURM's
`--signal=TERM@120` before a time limit, Kubernetes. The signal may reach some hosts of a job and not
others, or reach them steps apart; a process that saves and exits alone leaves the others hanging in
their next collective. With one process, a Python handler notes the signal. With several, JAX's
preemption service (started by `jax.distributed.initialize`, which installs its own SIGTERM handler)
shares the notice between processes and names one step at which all of them save and stop.
"""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Context manager; `reached(step)` must be called after every training step, on every process.

    Install it before compiling: a signal that arrives during compilation is then honoured after the
    first step instead of killing the process.
    """

    def __init__(self):
        self._single = jax.process_count() == 1
        self._requested = False
        self._previous = None

    def __enter__(self) -> PreemptionWatch:
        if self._single:
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc) -> None:
        if self._single:
            signal.signal(signal.SIGTERM, self._previous)

    def _note(self, signum, frame) -> None:
        del signum, frame
        self._requested = True

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step` (the same answer on every process)."""
        if self._single:
            return self._requested
        return multihost_utils.reached_preemption_sync_point(step)

"""Training curves as TensorBoard event files (`W/tensorboard/`), written by process 0 only.

tensorboardX writes the event format without TensorFlow, so the trainer keeps its no-TensorFlow
footprint; `tensorboard --logdir W/tensorboard` reads the files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax


class Summaries:
    def __init__(self, workdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{prefix}{name}", float(value), global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

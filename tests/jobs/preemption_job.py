"""One process of a multi-process job that steps in lockstep until `PreemptionWatch` says stop.

Run by tests/test_multiprocess.py with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
set. Process `--signal_process` sends itself SIGTERM after step `--signal_step`; every process prints
one JSON line: the step at which it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from avcanet_jax import runtime
from avcanet_jax.preemption import PreemptionWatch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signal_process", type=int, default=1)
    parser.add_argument("--signal_step", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    runtime.start("on")
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    total = jax.jit(jnp.sum)
    local = np.ones((jax.local_device_count(),), np.float32)
    with PreemptionWatch() as watch:
        for step in range(1, args.steps + 1):
            # A collective every step keeps the processes in lockstep, as a training step does.
            assert float(total(jax.make_array_from_process_local_data(sharding, local))) == jax.device_count()
            if jax.process_index() == args.signal_process and step == args.signal_step:
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.02)  # Steps of a real job take far longer than this collective.
            if watch.reached(step):
                break
    print(json.dumps({"process": jax.process_index(), "stopped_at": step}), flush=True)


if __name__ == "__main__":
    main()

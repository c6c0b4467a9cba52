"""Orbax checkpoints of the training state together with the data position, latest-K and best.

Two managers share a workdir: `checkpoints/` keeps the latest `keep` steps (what a preempted run
resumes from), `best/` keeps the single best step by a validation metric (what the final test uses).
Each checkpoint holds the model and optimizer state (`state`, restored onto whatever shardings the
caller's abstract state carries, so a run can resume on another mesh) and the data position (`data`,
a small JSON). The input pipeline is a pure function of (dataset, seed, global batch, step), so the
position is one number that means the same on any number of hosts, unlike Grain's iterator state, which
is saved per process and cannot be restored by a different process count; a resumed run sees exactly
the batches an uninterrupted one would have. Saves are asynchronous; every process writes its shards
of the state, process 0 the JSON.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from avcanet_jax.cli import UserError

# Orbax splits each replicated array among its replicas so that every host writes a part ("replica
# parallel"). Each split is a slice that JAX compiles once per shape and sharding: for the demo's ~1,000
# small arrays that is 440 compilations and 12 s on the first save of every process, to write kilobytes.
# Arrays whose per-replica part is under this size are written whole by one replica instead; the large
# arrays of the paper's model keep the parallel save.
MIN_REPLICA_SLICE_BYTES = 256 * 1024


class NoCheckpointError(UserError, FileNotFoundError):
    """The workdir given has no checkpoint to evaluate or predict with."""


def require_checkpoints(workdir: str) -> None:
    """For readers (`--mode=eval`, `predict`): a workdir without checkpoints is a user error, found before
    the managers would create their directories in it."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise NoCheckpointError(f"{workdir} holds no checkpoints (is it a training workdir?)")


@functools.cache
def _register_array_handler() -> None:
    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpoints:
    def __init__(self, workdir: str, keep: int = 3, best_metric: str = "uar", best_mode: str = "max"):
        _register_array_handler()
        root = os.path.abspath(workdir)
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            os.path.join(root, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
        )
        self.best = ocp.CheckpointManager(
            os.path.join(root, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: m[best_metric],
                best_mode=best_mode,
                keep_checkpoints_without_metrics=False,
                create=True,
            ),  # fmt: skip
            item_handlers={"state": ocp.StandardCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, data_position: dict | None = None, force: bool = False):
        """Starts an asynchronous save of the state and (when given) the data position."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_position is not None:
            items["data"] = ocp.args.JsonSave(data_position)
        return self.latest.save(step, args=ocp.args.Composite(**items), force=force)

    def save_best(self, step: int, state: Any, metrics: dict) -> bool:
        """Keeps `state` if `metrics[best_metric]` beats the best so far."""
        return self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), metrics=metrics)

    def restore(self, abstract_state: Any, step: int | None = None):
        """The state at `step` (default: latest), laid out as `abstract_state`."""
        step = self.latest.latest_step() if step is None else step
        restored = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return typed_keys(restored["state"], abstract_state)

    def data_position(self, step: int) -> dict | None:
        """The data position saved with `step`, or None when that checkpoint has none."""
        if not (self.latest.directory / str(step) / "data").exists():
            return None
        return self.latest.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

    def restore_best(self, abstract_state: Any):
        """(step, state) of the best checkpoint, or (None, None) when there is none."""
        step = self.best.best_step()
        return (None, None) if step is None else (step, self.restore_chosen(abstract_state, step, best=True))

    def chosen(self, prefer_best: bool = True) -> tuple[int, bool]:
        """(step, is_best) of the state an evaluation uses: the best when there is one (and `prefer_best`),
        else the latest. Raises NoCheckpointError for a workdir without checkpoints."""
        best = self.best.best_step() if prefer_best else None
        if best is not None:
            return best, True
        step = self.latest_step()
        if step is None:
            raise NoCheckpointError(f"{os.path.dirname(self.latest.directory)} holds no checkpoint; train first")
        return step, False

    def restore_chosen(self, abstract_state: Any, step: int, best: bool):
        """The state `chosen` named, laid out as `abstract_state`."""
        if not best:
            return self.restore(abstract_state, step=step)
        restored = self.best.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return typed_keys(restored["state"], abstract_state)

    def saved_state(self, step: int, best: bool = False):
        """The metadata tree (shapes, dtypes) of the state saved at `step`, read without restoring it."""
        return (self.best if best else self.latest).item_metadata(step)["state"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def typed_keys(restored: Any, abstract_state: Any) -> Any:
    """Orbax saves a typed PRNG key (Flax's dropout streams) as its raw uint32 data and restores it so;
    wrapped again, a restored state has the types of a fresh one, and runs the same compiled steps."""

    def wrap(value, target):
        if jax.dtypes.issubdtype(target.dtype, jax.dtypes.prng_key) and value.dtype != target.dtype:
            return jax.random.wrap_key_data(value)
        return value

    return jax.tree.map(wrap, restored, abstract_state)


def abstract(state: Any) -> Any:
    """ShapeDtypeStructs with the shardings of `state`, a restore target that allocates nothing."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

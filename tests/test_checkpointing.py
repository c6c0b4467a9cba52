"""Checkpoints restore the state onto another mesh, with the data position saved beside it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from avcanet_jax import sharding
from avcanet_jax.checkpointing import Checkpoints, abstract


def _state(mesh, spec):
    w = jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32)
    return {"w": jax.device_put(w, NamedSharding(mesh, spec)), "step": jnp.int32(7)}


def test_resume_restores_state_onto_another_mesh_and_the_data_position(tmp_path):
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    ckpt = Checkpoints(str(tmp_path), keep=2)
    state = _state(mesh, P("data", "fsdp"))
    ckpt.save(2, state, {"step": 2, "seed": 0})
    ckpt.save(3, state)  # No data position.
    ckpt.wait()

    other_mesh = sharding.make_mesh({"data": 2, "fsdp": 4})  # Resume on a different mesh layout.
    target = abstract(_state(other_mesh, P("fsdp", None)))
    again = Checkpoints(str(tmp_path), keep=2)
    restored = again.restore(target, step=2)
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert restored["w"].sharding.spec == P("fsdp", None) and restored["w"].sharding.mesh.shape["fsdp"] == 4
    assert again.data_position(2) == {"step": 2, "seed": 0}
    assert again.data_position(3) is None


def test_keeps_latest_k_and_the_best(tmp_path):
    ckpt = Checkpoints(str(tmp_path), keep=2, best_metric="uar")
    for step, uar in ((1, 0.3), (2, 0.6), (3, 0.4), (4, 0.5)):
        state = {"w": jnp.full((8, 2), float(step)), "step": jnp.int32(step)}
        ckpt.save(step, state)
        ckpt.save_best(step, state, {"uar": uar})
    ckpt.wait()
    assert ckpt.latest.all_steps() == [3, 4]
    step, best = ckpt.restore_best(abstract({"w": jnp.zeros((8, 2)), "step": jnp.int32(0)}))
    assert step == 2 and float(best["w"][0, 0]) == 2.0

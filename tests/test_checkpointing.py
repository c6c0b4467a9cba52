"""Checkpoints restore the state onto another mesh and the data iterator to the exact next batch."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from avcanet_jax import input_pipeline as ip
from avcanet_jax import sharding
from avcanet_jax.checkpointing import Checkpoints, abstract
from avcanet_jax.clip_sampling import ClipSpec

SMALL = ClipSpec(num_segments=4, frames_per_segment=4, crop_size=32, audio_frames=256)


def _state(mesh, spec):
    w = jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32)
    return {"w": jax.device_put(w, NamedSharding(mesh, spec)), "step": jnp.int32(7)}


def test_resume_restores_state_and_iterator(tiny_dataset, tmp_path):
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    cfg = ip.PipelineConfig(dataset="emotions/full", data_dir=tiny_dataset, clip=SMALL, global_batch_size=4)
    it = iter(ip.train_dataset(cfg))
    list(itertools.islice(it, 2))
    ckpt = Checkpoints(str(tmp_path), keep=2)
    state = _state(mesh, P("data", "fsdp"))
    ckpt.save(2, state, it)
    ckpt.wait()
    expected = [b["label"].copy() for b in itertools.islice(it, 3)]

    other_mesh = sharding.make_mesh({"data": 2, "fsdp": 4})  # Resume on a different mesh layout.
    target = abstract(_state(other_mesh, P("fsdp", None)))
    fresh = iter(ip.train_dataset(cfg))
    restored = Checkpoints(str(tmp_path), keep=2).restore(target, fresh)
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert restored["w"].sharding.spec == P("fsdp", None) and restored["w"].sharding.mesh.shape["fsdp"] == 4
    for b, e in zip(itertools.islice(fresh, 3), expected, strict=True):
        np.testing.assert_array_equal(b["label"], e)


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

"""Meshes from config and model state created sharded, on 8 fake CPU devices."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from test_model import TINY

from avcanet_jax import sharding
from avcanet_jax.avcanet import AVCANet
from avcanet_jax.layers import DEFAULT_RULES


def test_mesh_shape_fills_one_axis_and_names_errors():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(ValueError, match="mesh.axes"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="mesh.axes"):
        sharding.mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="mesh.axes"):
        sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)


def test_spec_replicates_dimensions_the_mesh_does_not_divide():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.spec_for(P("embed", "mlp"), (64, 128), mesh, DEFAULT_RULES) == P("fsdp", "tensor")
    assert sharding.spec_for(P("embed", None), (63, 6), mesh, DEFAULT_RULES) == P(None, None)
    assert sharding.spec_for(None, (5,), mesh, DEFAULT_RULES) == P()


def test_optimizer_state_split_over_an_axis_takes_the_first_free_dimension_it_divides():
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})

    def split(spec, shape, min_size=0):
        return sharding.split_over(jax.sharding.NamedSharding(mesh, spec), shape, "data", min_size).spec

    assert split(P(), (3, 3, 64, 64)) == P(None, None, "data", None)  # 3 is not divisible by 4.
    assert split(P("fsdp", None), (64, 128)) == P("fsdp", "data")  # fsdp splits the first already.
    assert split(P("tensor", None), (64, 128)) == P("data", None)  # tensor has size 1: no split there.
    assert split(P(), (96,), min_size=1000) == P()  # Too small to be worth its own all-gather.
    assert split(P(), (6, 10)) == P()  # No dimension divisible by 4.
    assert split(P("data"), (64,)) == P("data")
    no_data = sharding.make_mesh({"fsdp": 8})
    assert sharding.split_over(jax.sharding.NamedSharding(no_data, P()), (64,), "data", 0).spec == P()


def test_model_is_created_sharded_with_the_same_values():
    config = dataclasses.replace(TINY, modalities="visual")  # One branch: the same code, half the compile.
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = sharding.create_sharded(lambda: AVCANet(config, nnx.Rngs(0)), mesh, DEFAULT_RULES)
    fc1 = model.visual.backbone.stages[0][0].mlp.fc1.kernel[...]  # [16, 64]: (embed, mlp)
    assert fc1.sharding.spec == P("fsdp", "tensor")
    assert len(fc1.addressable_shards) == 8 and fc1.addressable_shards[0].data.shape == (8, 32)
    # The same initialisation compiled unsharded (eager, op by op, can differ in the last bit: a jitted
    # normal draw times its scale may fuse into one multiply-add).
    reference = jax.jit(lambda: nnx.state(AVCANet(config, nnx.Rngs(0)), nnx.Param))()
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

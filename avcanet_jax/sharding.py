"""Meshes and shardings from configuration: named mesh axes, logical-axis rules, sharded model creation.

The model annotates parameters with logical names (`avcanet_jax.layers`); this module turns those into
`NamedSharding`s for a mesh with a rules table, and creates model state directly in its sharded layout,
so a model never has to fit on one device first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves one -1 entry to fill the devices; checks that the product equals `num_devices`."""
    sizes = dict(axes)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh.axes: at most one axis may be -1, got {free}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if any(v == 0 or v < -1 for v in sizes.values()):
        raise ValueError(f"mesh.axes: sizes must be positive or -1, got {sizes}")
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh.axes: {num_devices} devices are not divisible by the fixed axes {sizes}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh.axes {sizes} use {math.prod(sizes.values())} devices, but there are {num_devices}")
    return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A mesh with the configured axis names (GSPMD-style Auto axes)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(axes, len(devices))
    return jax.make_mesh(
        tuple(sizes.values()), tuple(sizes), axis_types=(jax.sharding.AxisType.Auto,) * len(sizes), devices=devices
    )


def spec_for(
    logical: PartitionSpec | None, shape: Sequence[int], mesh: jax.sharding.Mesh, rules: Sequence
) -> PartitionSpec:
    """The mesh PartitionSpec of one array; a dimension the mapped mesh axes do not divide is replicated."""
    if logical is None or not len(logical):
        return PartitionSpec()
    mapped = nn.logical_to_mesh_axes(tuple(logical), tuple(rules))
    out = []
    for dim, axes in zip(shape, tuple(mapped) + (None,) * (len(shape) - len(mapped)), strict=True):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        names = tuple(a for a in names if a in mesh.shape)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(None if not names or dim % size else (names[0] if len(names) == 1 else names))
    return PartitionSpec(*out)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, rules: Sequence):
    """A NamedSharding for every array of an (abstract) nnx state, from its logical annotation."""
    logical = nnx.get_partition_spec(abstract_state)

    def one(spec, value):
        return NamedSharding(mesh, spec_for(spec, np.shape(value), mesh, rules))

    return jax.tree.map(one, logical, abstract_state, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def split_over(sharding: NamedSharding, shape: Sequence[int], axis: str, min_size: int) -> NamedSharding:
    """`sharding` with mesh `axis` also splitting the first dimension it divides that no other mesh axis
    (of size > 1) splits: ZeRO stage 1's layout for optimizer state, each device keeping and updating a part.

    The first such dimension, because gathering the parts back along the major dimension lands them in
    place, where a minor one costs a relayout copy. Arrays of fewer than `min_size` elements, with no such
    dimension, or split over `axis` already, keep `sharding`: every split array costs its own slice and
    all-gather, a fixed cost that a small array's share of the optimizer's work does not repay.
    """
    mesh, size = sharding.mesh, sharding.mesh.shape.get(axis, 1)  # A mesh without `axis`: nothing to split.
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    names = [() if e is None else (e if isinstance(e, tuple) else (e,)) for e in spec]
    if size == 1 or math.prod(shape) < min_size or any(axis in n for n in names):
        return sharding
    for i, dim in enumerate(shape):
        if math.prod(mesh.shape[a] for a in names[i]) == 1 and dim % size == 0:
            spec[i] = axis
            return NamedSharding(mesh, PartitionSpec(*spec), memory_kind=sharding.memory_kind)
    return sharding


def sharded_state(
    make_model: Callable[[], Any], mesh: jax.sharding.Mesh, rules: Sequence, adjust: Callable | None = None
):
    """(graphdef, abstract state, create) for the module(s) `make_model` returns, without creating them.

    `adjust(abstract_state, shardings) -> shardings`, if given, changes the shardings the rules give (e.g.
    `train_step.optimizer_split`).

    The abstract state holds a ShapeDtypeStruct with its NamedSharding per array: enough to compile the
    steps and to restore a checkpoint straight into the sharded layout, so a resumed run never builds
    (nor compiles the initialisation of) weights it would overwrite. `create()` makes the fresh state,
    every array created directly in its sharded layout (never whole on one device).
    """
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
    shardings = state_shardings(abstract_state, mesh, rules)
    if adjust is not None:
        shardings = adjust(abstract_state, shardings)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )

    def create():
        with jax.set_mesh(mesh):
            return jax.jit(lambda: nnx.state(make_model()), out_shardings=shardings)()

    return graphdef, abstract_state, create


def create_sharded(make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh, rules: Sequence) -> nnx.Module:
    """Builds the model with every array created directly in its sharded layout (never whole on one device)."""
    graphdef, _, create = sharded_state(make_model, mesh, rules)
    return nnx.merge(graphdef, create())

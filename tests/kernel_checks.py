"""What the kernel tests look for in a traced program."""

from __future__ import annotations

import jax
import numpy as np


def pallas_operands(jaxpr):
    """The operands of every pallas_call in a jaxpr, nested ones included."""
    return _pallas_vars(jaxpr, "invars")


def pallas_results(jaxpr):
    """The results of every pallas_call in a jaxpr, nested ones included."""
    return _pallas_vars(jaxpr, "outvars")


def _pallas_vars(jaxpr, kind: str):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield from getattr(eqn, kind)
        for sub in jax.core.jaxprs_in_params(eqn.params):
            yield from _pallas_vars(sub, kind)


def assert_same_value_and_grads(loss, reference, args, argnums, rtol: float = 1e-5, atol: float = 5e-6):
    """`loss` and `reference` agree at `args`: the value within `rtol`, and each gradient (same shape and
    dtype) within `atol` times its largest entry."""
    value, grads = jax.value_and_grad(loss, argnums=argnums)(*args)
    want_value, want = jax.value_and_grad(reference, argnums=argnums)(*args)
    np.testing.assert_allclose(value, want_value, rtol=rtol)
    for g, w in zip(grads, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=atol * float(np.abs(w).max()))


def assert_bfloat16_close_and_sharded_equal(loss, reference, args):
    """`loss` on bfloat16 `args` within bfloat16 rounding of `reference` on them in float32 (each gradient
    in its argument's dtype); and under a (2, 2, 2) mesh whose data and fsdp axes split the rows
    (`args[0]`), `loss` in float32 equal to `reference`: each device runs its own rows, and its share of
    every weight's gradient is summed over devices."""
    import flax.linen as nn

    from avcanet_jax import window_attention
    from avcanet_jax.layers import DEFAULT_RULES

    exact = [a.astype(np.float32) for a in args]
    argnums = tuple(range(len(args)))
    value, grads = jax.value_and_grad(loss, argnums=argnums)(*args)
    want_value, want = jax.value_and_grad(reference, argnums=argnums)(*exact)
    assert all(g.dtype == a.dtype for g, a in zip(grads, args, strict=True))
    np.testing.assert_allclose(value, want_value, rtol=3e-2)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=3e-2 * float(np.abs(w).max()))

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        assert window_attention.per_device_count(len(args[0])) == len(args[0]) // 4
        got = jax.jit(jax.value_and_grad(loss, argnums=argnums))(jax.device_put(exact[0], rows), *exact[1:])
    np.testing.assert_allclose(got[0], want_value, rtol=1e-5)
    for g, w in zip(got[1], want, strict=True):
        np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))

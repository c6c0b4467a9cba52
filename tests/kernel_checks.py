"""What the kernel tests look for in a traced program."""

from __future__ import annotations

import jax
import numpy as np


def pallas_operands(jaxpr):
    """The operands of every pallas_call in a jaxpr, nested ones included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield from eqn.invars
        for sub in jax.core.jaxprs_in_params(eqn.params):
            yield from pallas_operands(sub)


def assert_same_value_and_grads(loss, reference, args, argnums, rtol: float = 1e-5, atol: float = 5e-6):
    """`loss` and `reference` agree at `args`: the value within `rtol`, and each gradient (same shape and
    dtype) within `atol` times its largest entry."""
    value, grads = jax.value_and_grad(loss, argnums=argnums)(*args)
    want_value, want = jax.value_and_grad(reference, argnums=argnums)(*args)
    np.testing.assert_allclose(value, want_value, rtol=rtol)
    for g, w in zip(grads, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=atol * float(np.abs(w).max()))

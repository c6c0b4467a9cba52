"""What the kernel tests look for in a traced program."""

from __future__ import annotations

import jax


def pallas_operands(jaxpr):
    """The operands of every pallas_call in a jaxpr, nested ones included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield from eqn.invars
        for sub in jax.core.jaxprs_in_params(eqn.params):
            yield from pallas_operands(sub)

"""`layers.Linear` and `layers.LayerNorm`: Flax's own in float32; with bfloat16 compute, their float32
weights used as they are (no cast of the bias or the LayerNorm's weights) and the output rounded once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avcanet_jax.layers import BF16, FP32, layer_norm, linear

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((6, 24)) * 2 + 0.5, jnp.float32)
DY = jnp.asarray(RNG.standard_normal((6, 24)), jnp.float32)


def _set(module, **values):
    for name, value in values.items():
        getattr(module, name)[...] = jnp.asarray(value, jnp.float32)
    return module


def _weights():
    """Values no bfloat16 can hold, so a cast of them would show; the same in every test."""
    rng = np.random.default_rng(1)
    return {
        "linear": {"kernel": rng.standard_normal((24, 24)) * 0.2, "bias": rng.uniform(-1, 1, 24) + 1e-3},
        "norm": {"scale": 1.5 + rng.uniform(0.001, 0.005, 24), "bias": rng.uniform(-1, 1, 24) + 1e-3},
    }


def _run(module, x):
    """(module(x), the gradient of its weights for the cotangent DY)."""
    return module(x), nnx.grad(lambda m: (m(x).astype(jnp.float32) * DY).sum())(module)


def test_in_float32_they_are_flaxs_modules():
    w = _weights()
    flax_linear = _set(nnx.Linear(24, 24, rngs=nnx.Rngs(0)), **w["linear"])
    flax_norm = _set(nnx.LayerNorm(24, epsilon=1e-5, rngs=nnx.Rngs(0)), **w["norm"])
    for ours, theirs in (
        (_set(linear(24, 24, (None, None), nnx.Rngs(0), FP32), **w["linear"]), flax_linear),
        (_set(layer_norm(24, nnx.Rngs(0), FP32), **w["norm"]), flax_norm),
    ):
        (y, g), (y_ref, g_ref) = _run(ours, X), _run(theirs, X)
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_in_bfloat16_float32_weights_are_used_unrounded_and_the_output_rounded_once():
    w = _weights()
    x16 = X.astype(jnp.bfloat16)
    lin = _set(linear(24, 24, (None, None), nnx.Rngs(0), BF16), **w["linear"])
    norm = _set(layer_norm(24, nnx.Rngs(0), BF16), **w["norm"])
    # The Linear: the product of the rounded input and kernel, accumulated and biased in float32.
    kernel16 = jnp.asarray(w["linear"]["kernel"], jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)
    expected = (x16.astype(jnp.float32) @ kernel16 + jnp.asarray(w["linear"]["bias"], jnp.float32)).astype(jnp.bfloat16)
    # The LayerNorm: the float32 one on the rounded input, rounded once.
    f32_norm = _set(layer_norm(24, nnx.Rngs(0), FP32), **w["norm"])
    for module, reference, weights in (
        (lin, expected, ("bias",)),
        (norm, f32_norm(x16.astype(jnp.float32)).astype(jnp.bfloat16), ("scale", "bias")),
    ):
        y, grads = _run(module, x16)
        assert y.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(reference, np.float32), rtol=8e-3, atol=1e-2)
        for name in weights:  # float32 sums, not bfloat16 ones converted: nnx's would all be bf16 values.
            g = getattr(grads, name)[...]
            assert g.dtype == jnp.float32 and (g != g.astype(jnp.bfloat16).astype(jnp.float32)).any()
    # Flax's bfloat16 modules round the bias (and the LayerNorm's weights) first: their gradients show it.
    flax_lin = _set(nnx.Linear(24, 24, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), **w["linear"])
    g = _run(flax_lin, x16)[1].bias[...]
    assert (g == g.astype(jnp.bfloat16).astype(jnp.float32)).all()

"""EP-CE: weights for every polarity flip, no gradient through the argmax, totals over the heads."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avcanet_jax import losses
from tfds_emotions.classes import (
    EKMAN6_POLARITY,
    EMOTIONS_CLASSES,
    EMOTIONS_POLARITY,
    POLARITIES,
    VE8_POLARITY,
    class_polarities,
)

POL = np.array(class_polarities(EMOTIONS_CLASSES, EMOTIONS_POLARITY))
LAMBDAS = (0.1, 0.2, 0.3)  # Distinct per polarity (positive, neutral, negative) to check the indexing.


def test_weights_for_every_true_and_predicted_class():
    pairs = list(itertools.product(range(6), range(6)))
    labels = jnp.array([t for t, _ in pairs])
    logits = jax.nn.one_hot(jnp.array([p for _, p in pairs]), 6) * 5.0
    w = np.asarray(losses.ep_ce_weights(logits, labels, POL, LAMBDAS))
    for (t, p), wi in zip(pairs, w, strict=True):
        pt, pp = EMOTIONS_POLARITY[EMOTIONS_CLASSES[t]], EMOTIONS_POLARITY[EMOTIONS_CLASSES[p]]
        expected = 1.0 + (LAMBDAS[POLARITIES.index(pt)] if pt != pp else 0.0)
        assert wi == pytest.approx(expected), (EMOTIONS_CLASSES[t], EMOTIONS_CLASSES[p])
    # Fear predicted as Tension: same (negative) polarity, no penalty; as Excitation: penalised.
    assert w[pairs.index((1, 5))] == 1.0 and w[pairs.index((1, 0))] == pytest.approx(1.3)


def test_loss_is_plain_mean_of_weighted_ce():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((16, 6)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, 16))
    w = losses.ep_ce_weights(logits, labels, POL, LAMBDAS)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(losses.ep_ce(logits, labels, POL, LAMBDAS), (w * ce).mean(), rtol=1e-6)
    assert float(w.max()) > 1.0  # Some prediction crosses polarity, so the test can tell the two apart.


def test_no_gradient_through_the_argmax():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, 8))
    w = losses.ep_ce_weights(logits, labels, POL, LAMBDAS)
    grad = jax.grad(lambda z: losses.ep_ce(z, labels, POL, LAMBDAS))(logits)
    per_example = jax.vmap(jax.grad(lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y)))(logits, labels)
    np.testing.assert_allclose(grad, w[:, None] * per_example / 8, rtol=1e-5, atol=1e-7)


def test_total_sums_the_heads_each_with_its_own_argmax_and_respects_the_mask():
    rng = np.random.default_rng(2)
    out = {
        k: jnp.asarray(rng.standard_normal((4, 6)), jnp.float32) for k in ("logits", "logits_audio", "logits_visual")
    }
    labels = jnp.array([0, 1, 2, 3])
    total, terms = losses.total_loss(out, labels, class_polarity=POL)
    assert set(terms) == set(out)
    np.testing.assert_allclose(total, sum(losses.ep_ce(out[k], labels, POL) for k in out), rtol=1e-6)
    mask = jnp.array([True, True, False, False])
    masked, _ = losses.total_loss({"logits": out["logits"]}, labels, kind="ce", mask=mask)
    full = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels)
    np.testing.assert_allclose(masked, full[:2].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="loss"):
        losses.total_loss(out, labels, kind="focal")


def test_polarity_maps_cover_the_benchmarks():
    assert class_polarities(sorted(VE8_POLARITY), VE8_POLARITY) == [2, 0, 2, 2, 0, 2, 0, 0]
    assert class_polarities(EMOTIONS_CLASSES, EMOTIONS_POLARITY) == [0, 2, 1, 0, 2, 2]
    assert set(EKMAN6_POLARITY.values()) == {"positive", "negative"}

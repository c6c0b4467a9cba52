"""EP-CE, the emotion-polarity-enhanced cross-entropy (SPEC §4), and plain cross-entropy.

EP-CE weights each example's cross-entropy by 1 + lambda_{pol(y)} when the predicted class has a
different polarity than the label: confusing Fear with Excitation costs more than with Tension. The
weight is a constant of the step (no gradient flows through the argmax), and the mean is a plain mean,
not normalised by the weights. The training loss sums it over the fused and both unimodal logits,
each with its own argmax.

Which class has which polarity is the dataset's business: callers pass `class_polarity`, an int array
indexed by class (see `tfds_emotions.classes.class_polarities`), so this module needs no dataset code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax


def ep_ce_weights(
    logits: jax.Array, labels: jax.Array, class_polarity: jax.Array, lambdas: Sequence[float]
) -> jax.Array:
    """[B] weights 1 + lambda_{pol(y)} * [pol(argmax z) != pol(y)], with no gradient.

    `lambdas` is indexed like `tfds_emotions.classes.POLARITIES`: (positive, neutral, negative).
    """
    class_polarity = jnp.asarray(class_polarity)
    true_pol = class_polarity[labels]
    pred_pol = class_polarity[jnp.argmax(logits, axis=-1)]
    w = 1.0 + jnp.asarray(lambdas, jnp.float32)[true_pol] * (pred_pol != true_pol)
    return jax.lax.stop_gradient(w)


def ep_ce(logits, labels, class_polarity, lambdas=(0.5, 0.5, 0.5), mask=None) -> jax.Array:
    """Mean over (unmasked) examples of w_i * CE(z_i, y_i)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return _mean(ep_ce_weights(logits, labels, class_polarity, lambdas) * ce, mask)


def cross_entropy(logits, labels, mask=None) -> jax.Array:
    return _mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels), mask)


def _mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return x.mean()
    mask = mask.astype(x.dtype)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def total_loss(
    outputs: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    kind: str = "ep_ce",
    class_polarity=None,
    lambdas=(0.5, 0.5, 0.5),
    mask=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum of the loss over the fused and each present unimodal logits; also returns each term."""
    terms = {}
    for name in ("logits", "logits_audio", "logits_visual"):
        if name in outputs:
            z = outputs[name]
            if kind == "ep_ce":
                terms[name] = ep_ce(z, labels, class_polarity, lambdas, mask)
            elif kind == "ce":
                terms[name] = cross_entropy(z, labels, mask)
            else:
                raise ValueError(f"loss must be 'ep_ce' or 'ce', got {kind!r}")
    return sum(terms.values()), terms

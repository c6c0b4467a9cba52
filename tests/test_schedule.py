"""The intended warm cosine schedule at its landmarks."""

from __future__ import annotations

import numpy as np
import pytest

from avcanet_jax.schedule import warm_cosine


def test_landmarks():
    lr, spe = 1.5e-4, 100
    s = warm_cosine(lr, spe)
    assert float(s(0)) == pytest.approx(0.1 * lr)
    assert float(s(75)) == pytest.approx(lr * (0.1 + 0.9 * 0.25))  # Quadratic: half-way is a quarter.
    assert float(s(150)) == pytest.approx(lr)
    assert float(s(1500)) == pytest.approx(lr * (0.01 + 0.99 * 0.5), rel=1e-5)  # Cosine mid-point.
    assert float(s(2850)) == pytest.approx(0.01 * lr)
    assert float(s(3000)) == pytest.approx(0.01 * lr)  # Flat to the end (epoch 30).
    values = np.array([float(s(i)) for i in range(0, 3000, 10)])
    assert np.all(np.diff(values[:15]) > 0) and np.all(np.diff(values[15:286]) <= 1e-12)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        warm_cosine(1e-4, 0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        warm_cosine(1e-4, 10, warmup_epochs=30)

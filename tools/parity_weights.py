"""Seeded random weights for parity fixtures, reproducible with numpy alone.

The fixture script (with torch) and the parity tests (without torch) both call `random_state_dict` on
the same manifest of names and shapes, so fixture files need to hold only inputs, outputs, the seed and
the manifest, not tens of megabytes of weights.
"""

from __future__ import annotations

import zlib

import numpy as np


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A value for one state-dict entry, scaled so activations stay O(1) through deep networks."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(int(s) for s in shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf in ("running_mean", "bias"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if leaf == "weight" and len(shape) == 1:  # LayerNorm / BatchNorm scale.
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf == "relative_position_bias_table":
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def random_state_dict(manifest: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    return {name: random_tensor(name, shape, seed) for name, shape in sorted(manifest.items())}

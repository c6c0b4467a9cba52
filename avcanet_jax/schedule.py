"""The learning-rate schedule the authors intended (SPEC §5), per step.

Warm-up for `warmup_epochs`, rising quadratically from `warmup_start * lr` to `lr`; cosine decay to
`min_ratio * lr` at `decay_end_epoch`; flat afterwards. (Their code updates the rate once per epoch and,
through a bug, keeps it at the minimum throughout; this is the schedule their code describes.)
"""

from __future__ import annotations

import optax


def warm_cosine(
    lr: float,
    steps_per_epoch: int,
    *,
    warmup_epochs: float = 1.5,
    decay_end_epoch: float = 28.5,
    warmup_start: float = 0.1,
    min_ratio: float = 0.01,
) -> optax.Schedule:
    """An optax schedule of the step number."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if not 0 <= warmup_epochs < decay_end_epoch:
        raise ValueError(f"need 0 <= warmup_epochs ({warmup_epochs}) < decay_end_epoch ({decay_end_epoch})")
    warmup_steps = max(int(round(warmup_epochs * steps_per_epoch)), 1)
    decay_steps = max(int(round(decay_end_epoch * steps_per_epoch)) - warmup_steps, 1)

    def warmup(step):
        frac = step / warmup_steps
        return lr * (warmup_start + (1.0 - warmup_start) * frac**2)

    cosine = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_ratio)  # Stays at alpha * lr after.
    return optax.join_schedules([warmup, cosine], [warmup_steps])

"""The sharded train step on 8 fake devices: it learns, keeps its shardings, and accumulates gradients."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from avcanet_jax import config_checks, input_pipeline, sharding, train_step
from avcanet_jax.avcanet import AVCANet
from avcanet_jax.layers import DEFAULT_RULES
from configs import demo
from tfds_emotions.classes import EMOTIONS_CLASSES, EMOTIONS_POLARITY, class_polarities


def _setup(tiny_dataset, accumulation=1, lr=3e-3):
    c = demo.get_config()
    c.data.data_dir = tiny_dataset
    c.data.dataset = "emotions/full"
    c.batch_size = 8
    c.grad_accumulation = accumulation
    c.optimizer.lr = lr
    c.schedule.warmup_epochs = 0.0
    config_checks.validate(c, num_devices=8, num_processes=1)
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    model_cfg = config_checks.model_config(c)
    tx = train_step.make_optimizer(c, updates_per_epoch=100)

    def make():
        model = AVCANet(model_cfg, nnx.Rngs(params=0, dropout=1))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    model, optimizer = sharding.create_sharded(make, mesh, DEFAULT_RULES)
    graphdef, state = nnx.split((model, optimizer))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = input_pipeline.batch_sharding(mesh, ("data", "fsdp"))
    spec = train_step.LossSpec("ep_ce", tuple(class_polarities(EMOTIONS_CLASSES, EMOTIONS_POLARITY)), (0.5, 0.5, 0.5))
    steps = train_step.make_steps(graphdef, shardings, batch_sharding, mesh, spec)
    batches = iter(input_pipeline.train_dataset(config_checks.pipeline_config(c)))
    return state, steps, batches, batch_sharding


def test_train_step_accumulates_fits_a_batch_and_keeps_shardings(tiny_dataset):
    """One compiled step (two micro-steps per update) checked three ways, to keep the suite fast."""
    state, (step, evaluate), batches, batch_sharding = _setup(tiny_dataset, accumulation=2)
    batch = input_pipeline.to_global(train_step.model_batch(next(batches)), batch_sharding)
    shardings_before = jax.tree.map(lambda x: x.sharding, state)

    def classifier_kernel(s):
        flat = dict(nnx.to_flat_state(s))
        return np.asarray(next(v for k, v in flat.items() if k[:4] == (0, "classifier", "out", "kernel"))[...])

    first = classifier_kernel(state)
    state, metrics = step(state, batch)
    np.testing.assert_array_equal(classifier_kernel(state), first)  # Accumulating, no update yet.
    losses = [float(metrics["loss"])]
    for _ in range(23):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert not np.allclose(classifier_kernel(state), first)
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
    assert jax.tree.map(lambda x: x.sharding, state) == shardings_before
    logits = evaluate(state, batch)["logits"]
    assert logits.shape == (8, 6) and logits.sharding == batch_sharding

"""The sharded train step on 8 fake devices (it learns and keeps its shardings) and the accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_train_config
from flax import nnx

from avcanet_jax import input_pipeline, train, train_step
from avcanet_jax.checkpointing import Checkpoints
from configs import demo


def test_train_step_fits_a_batch_and_keeps_shardings(tiny_dataset):
    # The same config as the `trained` fixture, so the compiled step comes from the compilation cache.
    run = train.prepare(tiny_train_config(tiny_dataset))
    batches = iter(input_pipeline.train_dataset(run.pcfg))
    batch = input_pipeline.to_global(train_step.model_batch(next(batches)), run.batch_sharding)
    state = run.create_state()
    shardings_before = jax.tree.map(lambda x: x.sharding, state)
    losses = []
    for _ in range(16):
        state, metrics = run.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
    assert jax.tree.map(lambda x: x.sharding, state) == shardings_before
    logits = run.eval_step(state, batch)["logits"]
    assert logits.shape == (8, 6) and logits.sharding == run.batch_sharding


def test_optimizer_state_split_over_data_updates_the_same_weights(tiny_dataset, monkeypatch, tmp_path):
    """`optimizer.shard_over_data` (ZeRO stage 1): AdamW's moments live split over the data axis, the weights
    stay in their own layout, two steps update the weights as the unsplit optimizer does, and a run that
    turns the option on resumes from a checkpoint saved with it off."""
    monkeypatch.setattr(train_step, "SPLIT_MIN_SIZE", 256)  # The demo model's arrays are small.
    states, runs = {}, {}
    for split in (False, True):
        c = tiny_train_config(tiny_dataset)
        c.optimizer.shard_over_data = split
        run = train.prepare(c)
        batch = next(iter(input_pipeline.train_dataset(run.pcfg)))
        batch = input_pipeline.to_global(train_step.model_batch(batch), run.batch_sharding)
        state = run.create_state()
        shardings = jax.tree.map(lambda x: x.sharding, state)
        for _ in range(2):
            state, _ = run.train_step(state, batch)
        assert jax.tree.map(lambda x: x.sharding, state) == shardings
        states[split], runs[split] = state, run
    specs = {
        split: [leaf.sharding.spec for leaf in jax.tree.leaves(s[1]["opt_state"]) if leaf.size >= 256]
        for split, s in states.items()
    }
    assert not any("data" in spec for spec in specs[False])
    assert sum("data" in spec for spec in specs[True]) > len(specs[True]) // 2, specs[True]
    assert jax.tree.map(lambda x: x.sharding, states[True][0]) == jax.tree.map(lambda x: x.sharding, states[False][0])
    weights = {split: jax.tree.leaves(nnx.filter_state(s[0], nnx.Param)) for split, s in states.items()}
    for a, b in zip(weights[True], weights[False], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    checkpoints = Checkpoints(str(tmp_path), keep=1)
    checkpoints.save(2, states[False])
    checkpoints.wait()
    restored = checkpoints.restore(runs[True].abstract_state, step=2)
    assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(lambda x: x.sharding, states[True])
    moments = [jax.tree.leaves(s[1]["opt_state"]) for s in (restored, states[False])]
    for a, b in zip(*moments, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gradient_accumulation_updates_every_k_micro_steps():
    c = demo.get_config()
    c.grad_accumulation = 2
    c.schedule.warmup_epochs = 0.0
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, train_step.make_optimizer(c, updates_per_epoch=10), wrt=nnx.Param)
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    kernels = [np.asarray(model.kernel[...])]
    for _ in range(4):
        grads = nnx.grad(lambda m: ((m(x) - y) ** 2).mean())(model)
        optimizer.update(model, grads)
        kernels.append(np.asarray(model.kernel[...]))
    changed = [not np.array_equal(a, b) for a, b in zip(kernels, kernels[1:], strict=False)]
    assert changed == [False, True, False, True]  # One AdamW update per two micro-steps.


def test_first_moment_in_bfloat16_when_asked():
    """`optimizer.mu_dtype="bfloat16"`: AdamW keeps its first moment in bfloat16, its second moment and the
    weights in float32, and its first update is float32's within bfloat16 rounding."""
    c = demo.get_config()
    c.schedule.warmup_epochs = 0.0
    x, y = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), jnp.ones((4, 2))
    kernels, moments = {}, {}
    for dtype in ("float32", "bfloat16"):
        c.optimizer.mu_dtype = dtype
        model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, train_step.make_optimizer(c, updates_per_epoch=10), wrt=nnx.Param)
        optimizer.update(model, nnx.grad(lambda m: ((m(x) - y) ** 2).mean())(model))
        kernels[dtype] = np.asarray(model.kernel[...])
        moments[dtype] = {str(leaf.dtype) for leaf in jax.tree.leaves(optimizer.opt_state) if leaf.ndim}
    assert moments == {"float32": {"float32"}, "bfloat16": {"bfloat16", "float32"}}
    assert kernels["bfloat16"].dtype == np.float32
    np.testing.assert_allclose(kernels["bfloat16"], kernels["float32"], rtol=1e-2, atol=1e-6)

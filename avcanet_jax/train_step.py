"""The optimizer and the jitted, sharded train and eval steps.

Functional NNX in the hot loop (as in maxtext): the model and optimizer are split once into a graph
definition and a state pytree; the steps are pure functions of (state, batch) under `jax.jit` with
explicit in/out shardings, and the train step donates the old state so an update needs no second copy.
Gradient accumulation (the paper's 8 x 4) is optax.MultiSteps: the optimizer applies one update per
`grad_accumulation` micro-steps, and the schedule counts those updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from avcanet_jax import losses, sharding
from avcanet_jax.avcanet import AVCANet, ModelConfig
from avcanet_jax.schedule import warm_cosine


def make_schedule(c, updates_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the optimizer update count (not the micro-step)."""
    return warm_cosine(
        c.optimizer.lr, updates_per_epoch, warmup_epochs=c.schedule.warmup_epochs,
        decay_end_epoch=c.schedule.decay_end_epoch, warmup_start=c.schedule.warmup_start,
        min_ratio=c.schedule.min_ratio,
    )  # fmt: skip


def make_optimizer(c, updates_per_epoch: int) -> optax.GradientTransformation:
    """AdamW on the intended warm-cosine schedule (its first moment in `optimizer.mu_dtype`), optional
    global-norm clipping, accumulation."""
    schedule, o = make_schedule(c, updates_per_epoch), c.optimizer
    parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm else []
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mu_dtype=jnp.dtype(o.mu_dtype)))
    tx = optax.chain(*parts)
    return optax.MultiSteps(tx, every_k_schedule=c.grad_accumulation) if c.grad_accumulation > 1 else tx


# Optimizer-state arrays below this many elements stay whole on every device (`sharding.split_over`): in
# the base recipe, those of 395 of its 575 parameters, which hold 1.2% of its weights.
SPLIT_MIN_SIZE = 2**16


def optimizer_axis(c) -> str | None:
    """The mesh axis AdamW's state is split over (`optimizer.shard_over_data`), else None."""
    return "data" if c.optimizer.shard_over_data else None


def optimizer_split(axis: str | None) -> Callable | None:
    """`sharding.sharded_state`'s `adjust` for `nnx.state((model, optimizer))`: the optimizer's state (AdamW's
    moments, accumulated gradients) split over mesh `axis` (ZeRO stage 1); the model's state as it was."""
    if axis is None:
        return None

    def adjust(abstract_state, shardings):
        def one(path, s, a):
            in_optimizer = path[0].key == 1 and path[1].key == "opt_state"
            return sharding.split_over(s, a.shape, axis, SPLIT_MIN_SIZE) if in_optimizer else s

        return jax.tree_util.tree_map_with_path(one, shardings, abstract_state)

    return adjust


def model_and_optimizer(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> Callable:
    """A function making (model, optimizer): what trainer, compiler and predictor create, sharded or abstract."""

    def make():
        model = AVCANet(model_cfg, nnx.Rngs(params=seed, dropout=seed + 1))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    return make


@dataclasses.dataclass(frozen=True)
class LossSpec:
    kind: str
    class_polarity: tuple[int, ...]
    lambdas: tuple[float, float, float]


def _loss_and_metrics(model, batch, spec: LossSpec):
    out = model(batch["video"], batch["audio"])
    with jax.named_scope("loss"):
        total, terms = losses.total_loss(
            out, batch["label"], kind=spec.kind, class_polarity=jnp.asarray(spec.class_polarity),
            lambdas=spec.lambdas, mask=batch["mask"],
        )  # fmt: skip
    mask = batch["mask"].astype(jnp.float32)
    correct = (out["logits"].argmax(-1) == batch["label"]).astype(jnp.float32)
    metrics = {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}
    metrics["accuracy"] = (correct * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    return total, (metrics, out)


def _split_gradient(grad: jax.Array, param_sharding: NamedSharding, axis: str) -> jax.Array:
    """`grad` summed over the batch in the parameter's layout, then cut to its optimizer state's split.

    The first constraint leaves that sum where XLA puts it by itself, at the weight-gradient products in
    the backward pass's dtype; constrained to the split alone, XLA repartitioned those products instead
    (the audio ResNet from 4.5 to 9.1 million cycles on a v5e). The second lets the update, and the cast
    of a bfloat16 gradient to float32 before it, run on each device's part: with the first alone, those
    casts ran over whole arrays (1.5 million cycles more).
    """
    grad = jax.lax.with_sharding_constraint(grad, param_sharding)
    return jax.lax.with_sharding_constraint(grad, sharding.split_over(param_sharding, grad.shape, axis, SPLIT_MIN_SIZE))


def make_steps(
    graphdef, state_shardings, batch_sharding: NamedSharding, mesh: jax.sharding.Mesh, spec: LossSpec,
    optimizer_axis: str | None = None,
) -> tuple[Callable, Callable]:  # fmt: skip
    """(train_step(state, batch) -> (state, metrics), eval_step(state, batch) -> outputs).

    `state` is `nnx.state((model, optimizer))`; `state_shardings` its NamedShardings. `optimizer_axis`:
    the mesh axis the optimizer state is split over (`optimizer_split`), else None.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings = nnx.filter_state(state_shardings[0], nnx.Param) if optimizer_axis else None

    # The mesh is known while tracing, so that code which must run per device (a Pallas kernel, which XLA
    # cannot partition, under `jax.shard_map`) can find it.
    def train(state, batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            model, optimizer = nnx.merge(graphdef, state)
            model.train()
            grad_fn = nnx.value_and_grad(lambda m: _loss_and_metrics(m, batch, spec), has_aux=True)
            (_, (metrics, _)), grads = grad_fn(model)
            if optimizer_axis is not None:
                grads = jax.tree.map(lambda g, s: _split_gradient(g, s, optimizer_axis), grads, param_shardings)
            with jax.named_scope("optimizer"):
                metrics["grad_norm"] = optax.global_norm(grads)
                optimizer.update(model, grads)
            return nnx.state((model, optimizer)), metrics

    def evaluate(state, batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            model, _ = nnx.merge(graphdef, state)
            model.eval()
            return model(batch["video"], batch["audio"])

    batch_shardings = jax.tree.map(lambda _: batch_sharding, {"video": 0, "audio": 0, "label": 0, "mask": 0})
    train_step = jax.jit(
        train, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )  # fmt: skip
    eval_step = jax.jit(evaluate, in_shardings=(state_shardings, batch_shardings), out_shardings=batch_sharding)
    return train_step, eval_step


def model_batch(batch: dict) -> dict:
    """The fields the steps take (the pipeline also yields polarity, has_audio and index)."""
    return {k: batch[k] for k in ("video", "audio", "label", "mask")}

"""Training and evaluation, top to bottom: config -> mesh -> data -> sharded state -> restore -> loop.

Phases, in order: check the config (before any compilation); build the mesh; open the data and the
iterators; create model and optimizer state already sharded; restore the workdir's latest checkpoint
(state and data position), else `init_from`, else keep the fresh state; run the jitted steps, logging,
checkpointing every `checkpoint_every_steps` and on SIGTERM, evaluating on validation every epoch
(best-by-UAR kept); finally evaluate the best state on test. Only process 0 writes logs and metrics.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from avcanet_jax import config_checks, input_pipeline, sharding, train_step
from avcanet_jax.avcanet import AVCANet
from avcanet_jax.checkpointing import Checkpoints, abstract
from avcanet_jax.layers import DEFAULT_RULES
from avcanet_jax.metrics import classification_metrics


class NonFiniteLoss(RuntimeError):
    """Training produced NaN or inf; the last good checkpoint is kept."""


def _dataset_info(pcfg: input_pipeline.PipelineConfig):
    """(class names, class polarities, split names) of the built dataset."""
    import tensorflow_datasets as tfds

    import tfds_emotions  # noqa: F401
    from tfds_emotions.classes import EMOTIONS_POLARITY, class_polarities

    info = tfds.builder(pcfg.dataset, data_dir=pcfg.data_dir).info
    names = info.features["label"].names
    return tuple(names), tuple(class_polarities(names, EMOTIONS_POLARITY)), set(info.splits)


def _write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)


def evaluate(eval_step, state, pcfg, split: str, batch_sharding, class_names, class_polarity) -> dict:
    """Runs one pass over `split` and computes the metrics on the unpadded examples."""
    labels, outputs = [], {}
    source = input_pipeline.data_source(pcfg, split)
    for batch in input_pipeline.eval_dataset(pcfg, split, source=source):
        out = eval_step(state, input_pipeline.to_global(train_step.model_batch(batch), batch_sharding))
        keep = np.asarray(batch["mask"])
        labels.append(np.asarray(batch["label"])[keep])
        for k, v in out.items():  # Single-process gather; multi-host evaluation is issue 5's.
            outputs.setdefault(k, []).append(np.asarray(v)[keep])
    out = {k: np.concatenate(v) for k, v in outputs.items()}
    return classification_metrics(np.concatenate(labels), out, class_names, class_polarity)


def train_and_evaluate(c, workdir: str) -> dict:
    mesh_axes = config_checks.validate(c)
    mesh = sharding.make_mesh(mesh_axes)
    pcfg = config_checks.pipeline_config(c)
    model_cfg = config_checks.model_config(c)
    class_names, class_polarity, splits = _dataset_info(pcfg)
    if len(class_names) != model_cfg.num_classes:
        raise config_checks.ConfigError(
            f"config.model.num_classes ({model_cfg.num_classes}) != {len(class_names)} classes in {pcfg.dataset}"
        )
    train_source = input_pipeline.data_source(pcfg, "train")
    micro_per_epoch = len(train_source) // c.batch_size
    updates_per_epoch = max(micro_per_epoch // c.grad_accumulation, 1)
    total_steps = micro_per_epoch * c.num_epochs
    tx = train_step.make_optimizer(c, updates_per_epoch)

    def make():
        model = AVCANet(model_cfg, nnx.Rngs(params=c.seed, dropout=c.seed + 1))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    model, optimizer = sharding.create_sharded(make, mesh, DEFAULT_RULES)
    graphdef, state = nnx.split((model, optimizer))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = input_pipeline.batch_sharding(mesh, config_checks.BATCH_AXES)
    spec = train_step.LossSpec(c.loss, class_polarity, tuple(c.ep_ce_lambdas))
    step_fn, eval_fn = train_step.make_steps(graphdef, shardings, batch_sharding, mesh, spec)

    data_iter = iter(input_pipeline.train_dataset(pcfg, source=train_source))
    ckpt = Checkpoints(workdir, keep=c.keep_checkpoints)
    start = 0
    if ckpt.latest_step() is not None:
        start = ckpt.latest_step()
        state = ckpt.restore(abstract(state), data_iter)
        logging.info("resumed from step %d", start)
    elif c.init_from:
        from avcanet_jax import import_weights

        model, optimizer = nnx.merge(graphdef, state)
        import_weights.restore(model, c.init_from)
        state = nnx.state((model, optimizer))
        logging.info("initialised from %s", c.init_from)

    stop = {"requested": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    history, t0, last_log = [], time.time(), time.time()
    try:
        for step in range(start, total_steps):
            batch = input_pipeline.to_global(train_step.model_batch(next(data_iter)), batch_sharding)
            state, metrics = step_fn(state, batch)
            done = step + 1
            if done % c.log_every_steps == 0 or done == total_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not all(math.isfinite(v) for v in metrics.values()):
                    raise NonFiniteLoss(f"non-finite metrics at step {done}: {metrics}; last checkpoint kept")
                now = time.time()
                rate = c.log_every_steps * c.batch_size / max(now - last_log, 1e-9)
                eta = (total_steps - done) * c.batch_size / max(rate, 1e-9)
                logging.info("step %d/%d loss %.4f acc %.3f %.1f clips/s ETA %.0fs", done, total_steps,
                             metrics["loss"], metrics["accuracy"], rate, eta)  # fmt: skip
                history.append({"step": done, **metrics})
                last_log = now
            if done % c.checkpoint_every_steps == 0:
                ckpt.save(done, state, data_iter)
            if stop["requested"] or done == c.get("max_steps", 0):
                ckpt.save(done, state, data_iter, force=True)
                ckpt.wait()
                logging.info("stopping at step %d (%s); resume continues from here", done,
                             "SIGTERM" if stop["requested"] else "max_steps")  # fmt: skip
                return {"stopped_at": done}
            if done % micro_per_epoch == 0 and "validation" in splits:
                val = evaluate(eval_fn, state, pcfg, "validation", batch_sharding, class_names, class_polarity)
                ckpt.save_best(done, state, {"uar": val["uar"], "accuracy": val["accuracy"]})
                _write_json(os.path.join(workdir, "eval", "validation_metrics.json"), {"step": done, **val})
        ckpt.save(total_steps, state, data_iter, force=True)
        ckpt.wait()
        best_step, best = ckpt.restore_best(abstract(state))
        test = evaluate(eval_fn, best if best is not None else state, pcfg, "test", batch_sharding, class_names,
                        class_polarity)  # fmt: skip
        result = {"best_step": best_step, "elapsed_s": time.time() - t0, **test}
        _write_json(os.path.join(workdir, "eval", "test_metrics.json"), result)
        _write_json(os.path.join(workdir, "train_history.json"), history)
        return result
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()

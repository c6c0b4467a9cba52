"""Training and evaluation, top to bottom: config -> mesh -> data -> sharded state -> restore -> loop.

Phases, in order: check the config (before any compilation); build the mesh; open the data and the
iterators; create model and optimizer state already sharded; restore the workdir's latest checkpoint
(state and data position), else `init_from`, else keep the fresh state; run the jitted steps, logging,
checkpointing every `checkpoint_every_steps` and on SIGTERM, evaluating on validation every epoch
(best-by-UAR kept); finally evaluate the best state on test. Only process 0 writes logs and metrics.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import jax
from absl import logging
from flax import nnx

from avcanet_jax import checkpointing, config_checks, datasets, evaluation, input_pipeline, sharding, train_step
from avcanet_jax import workdir as wdir
from avcanet_jax.checkpointing import Checkpoints
from avcanet_jax.layers import DEFAULT_RULES
from avcanet_jax.preemption import PreemptionWatch
from avcanet_jax.summaries import Summaries


class NonFiniteLoss(RuntimeError):
    """Training produced NaN or inf; the last good checkpoint is kept."""


class LoggedCompile:
    """A jitted step compiled on its first call, between two log lines: compiling the paper's model takes
    minutes, and a silent program looks hung. The compiled executable is what every later call runs
    (the batch shapes never change), and the time of the first logged step no longer includes it."""

    def __init__(self, jitted: Callable, name: str):
        self.jitted, self.name, self.compiled = jitted, name, None

    def compile(self, *args) -> None:
        if self.compiled is None:
            logging.info("compiling the %s step...", self.name)
            t0 = time.time()
            self.compiled = self.jitted.lower(*args).compile()
            logging.info("compiled the %s step in %.0f s", self.name, time.time() - t0)

    def __call__(self, *args):
        self.compile(*args)
        return self.compiled(*args)


@dataclasses.dataclass
class Run:
    """Everything built from a config before the first step."""

    mesh: jax.sharding.Mesh
    pcfg: input_pipeline.PipelineConfig
    data: datasets.Info
    train_source: object
    graphdef: nnx.GraphDef
    abstract_state: nnx.State  # ShapeDtypeStructs with their shardings: a restore target.
    create_state: Callable[[], nnx.State]  # The fresh, sharded state.
    batch_sharding: jax.sharding.NamedSharding
    train_step: Callable
    eval_step: Callable
    schedule: Callable
    micro_per_epoch: int
    total_steps: int


def prepare(c, splits: tuple[str, ...] | None = None) -> Run:
    """Checks the config and that the dataset has `splits` (default: those training needs), builds the
    mesh, the abstract sharded state and the jitted steps (compiled on first use)."""
    mesh = sharding.make_mesh(config_checks.validate(c))
    pcfg = config_checks.pipeline_config(c)
    model_cfg = config_checks.model_config(c)
    data = datasets.info(pcfg.dataset, pcfg.data_dir)
    datasets.check_num_classes(model_cfg.num_classes, pcfg.dataset, data.card)
    datasets.check_splits(pcfg.dataset, data, needed_splits(c) if splits is None else splits)
    train_source = input_pipeline.data_source(pcfg, "train")
    micro_per_epoch = len(train_source) // c.batch_size
    if micro_per_epoch == 0:
        raise config_checks.ConfigError(f"config.batch_size ({c.batch_size}) exceeds the train split of {pcfg.dataset}")
    updates_per_epoch = max(micro_per_epoch // c.grad_accumulation, 1)
    tx = train_step.make_optimizer(c, updates_per_epoch)

    make = train_step.model_and_optimizer(model_cfg, tx, c.seed)
    optimizer_axis = train_step.optimizer_axis(c)
    graphdef, abstract_state, create_state = sharding.sharded_state(
        make, mesh, DEFAULT_RULES, train_step.optimizer_split(optimizer_axis)
    )
    shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    batch_sharding = input_pipeline.batch_sharding(mesh, config_checks.BATCH_AXES)
    spec = train_step.LossSpec(c.loss, data.card.class_polarity, tuple(c.ep_ce_lambdas))
    step_fn, eval_fn = train_step.make_steps(graphdef, shardings, batch_sharding, mesh, spec, optimizer_axis)
    step_fn, eval_fn = LoggedCompile(step_fn, "train"), LoggedCompile(eval_fn, "eval")
    return Run(
        mesh, pcfg, data, train_source, graphdef, abstract_state, create_state, batch_sharding, step_fn, eval_fn,
        train_step.make_schedule(c, updates_per_epoch), micro_per_epoch, micro_per_epoch * c.num_epochs,
    )  # fmt: skip


def needed_splits(c) -> tuple[str, ...]:
    """The splits a training run reads: validation only when it selects the tested state on it."""
    return ("train", "validation", "test") if c.get("select_on_validation", True) else ("train", "test")


def _evaluate(run: Run, state, split: str) -> dict:
    return evaluation.evaluate(
        run.eval_step,
        state,
        run.pcfg,
        split,
        run.batch_sharding,
        run.data.card.class_names,
        run.data.card.class_polarity,
    )


def _headline(split: str, m: dict) -> str:
    heads = (("audio-only", "audio_only_accuracy"), ("visual-only", "visual_only_accuracy"))
    unimodal = "".join(f" {name} {m[key]:.3f}" for name, key in heads if key in m)
    figures = " ".join(evaluation.with_interval(m, key, name) for key, name in evaluation.HEADLINE)
    return f"{split}: {figures}{unimodal}"


def train_and_evaluate(c, workdir: str) -> dict:
    """Trains (resuming if `workdir` has checkpoints), then tests the best state. Returns the test metrics,
    or {"stopped_at": step} when SIGTERM or `max_steps` ended the run early.

    SIGTERM (a preemption notice, or SLURM's warning before a time limit) is watched for from the start,
    so one that arrives while the program is still compiling stops the run after its first step; with
    several processes, all of them stop at the same step (see `preemption`)."""
    with PreemptionWatch() as watch:
        logging.info("training in %s; SIGTERM saves a checkpoint and stops", workdir)
        return _train(c, workdir, watch)


def _data_position(pcfg: input_pipeline.PipelineConfig, step: int) -> dict:
    """What the checkpoint records of the data stream: enough to continue it, and to refuse a stream that
    a changed config would make different."""
    return {"step": step, "dataset": pcfg.dataset, "global_batch_size": pcfg.global_batch_size, "seed": pcfg.seed,
            "process_count": jax.process_count()}  # fmt: skip


def _check_resumable(saved: dict | None, pcfg: input_pipeline.PipelineConfig, step: int) -> None:
    """A resumed run must continue the same data stream; the process count, mesh and workers may change."""
    if saved is None:
        logging.warning("checkpoint %d records no data position; continuing the data stream at its step", step)
        return
    now = _data_position(pcfg, step)
    fields = {"dataset": "config.data.dataset", "global_batch_size": "config.batch_size", "seed": "config.seed"}
    for key, field in fields.items():
        if saved[key] != now[key]:
            raise config_checks.ConfigError(
                f"{field} is {now[key]!r} but the checkpoint at step {step} was trained with {saved[key]!r}; "
                "resume with the same value, or start a new workdir"
            )
    if saved["process_count"] != now["process_count"]:
        logging.info("resuming a %d-process run with %d processes", saved["process_count"], now["process_count"])


def _train(c, workdir: str, watch: PreemptionWatch) -> dict:
    run = prepare(c)
    ckpt = Checkpoints(workdir, keep=c.keep_checkpoints)
    summaries = None
    try:
        # Everything that can refuse this run is checked before anything in the workdir is written.
        start = ckpt.latest_step() or 0
        if start:
            wdir.check_checkpoint_fits(workdir, c, ckpt, run.abstract_state, start)
            _check_resumable(ckpt.data_position(start), run.pcfg, start)
        changed = wdir.record_start(workdir, c, start)
        if start and changed:
            logging.warning("resuming with config fields changed since the last start: %s", ", ".join(changed))
        history = wdir.train_history(workdir, start)
        if start:
            state = ckpt.restore(run.abstract_state)
            logging.info("resumed from step %d", start)
        else:
            state = run.create_state()
        if not start and c.init_from:
            from avcanet_jax import import_weights

            model, optimizer = nnx.merge(run.graphdef, state)
            import_weights.restore(model, c.init_from)
            state = nnx.state((model, optimizer))
            logging.info("initialised from %s", c.init_from)
        summaries = Summaries(workdir)
        return _loop(c, workdir, run, ckpt, summaries, watch, state, start, history)
    finally:
        if summaries is not None:
            summaries.close()
        ckpt.close()


def _loop(c, workdir: str, run: Run, ckpt: Checkpoints, summaries: Summaries, watch, state, start, history) -> dict:
    """The training steps from `start`, then the test of the best (or last) state."""
    total, per_epoch = run.total_steps, run.micro_per_epoch
    validate = c.get("select_on_validation", True)
    data_iter = iter(input_pipeline.train_dataset(run.pcfg, source=run.train_source, start_step=start))
    t0, last_log, last_step = time.time(), None, start

    def save(step: int, force: bool = False) -> None:
        ckpt.save(step, state, _data_position(run.pcfg, step), force=force)
        evaluation.write_json(os.path.join(workdir, wdir.TRAIN_HISTORY), history)

    for step in range(start, total):
        batch = input_pipeline.to_global(train_step.model_batch(next(data_iter)), run.batch_sharding)
        if last_log is None:  # The clock of the first logged step starts after the compilation.
            run.train_step.compile(state, batch)
            last_log = time.time()
        state, metrics = run.train_step(state, batch)
        done = step + 1
        if done % c.log_every_steps == 0 or done == total:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(math.isfinite(v) for v in metrics.values()):
                raise NonFiniteLoss(f"non-finite metrics at step {done}: {metrics}; last checkpoint kept")
            now = time.time()
            step_s = (now - last_log) / max(done - last_step, 1)
            metrics["lr"] = float(run.schedule(step // c.grad_accumulation))
            metrics["clips_per_s"] = c.batch_size / max(step_s, 1e-9)
            logging.info(
                "step %d/%d epoch %d loss %.4f acc %.3f lr %.2e %.0f ms/step %.1f clips/s ETA %.0fs", done, total,
                math.ceil(done / per_epoch), metrics["loss"], metrics["accuracy"], metrics["lr"], 1e3 * step_s,
                metrics["clips_per_s"], (total - done) * step_s,
            )  # fmt: skip
            summaries.scalars(done, metrics, "train/")
            history.append({"step": done, **metrics})
            last_log, last_step = now, done
        preempted = watch.reached(done)
        if preempted or done == c.get("max_steps", 0):
            save(done, force=True)
            ckpt.wait()
            logging.info("stopping at step %d (%s); resume continues from here", done,
                         "SIGTERM" if preempted else "max_steps")  # fmt: skip
            return {"stopped_at": done}
        if done % c.checkpoint_every_steps == 0:
            save(done)
        if done % per_epoch == 0 and validate:
            val = _evaluate(run, state, "validation")
            logging.info("step %d %s", done, _headline("validation", val))
            summaries.scalars(done, val, "validation/")
            ckpt.save_best(done, state, {"uar": val["uar"], "accuracy": val["accuracy"]})
            evaluation.write_report(workdir, "validation", val, run.data.card.class_names, step=done)
    if ckpt.latest_step() != total:  # The loop saved it when checkpoint_every_steps divides `total`.
        save(total, force=True)
    ckpt.wait()
    best_step, best = ckpt.restore_best(run.abstract_state) if validate else (None, None)
    test = _evaluate(run, best if best is not None else state, "test")
    result = {"best_step": best_step or total, "elapsed_s": time.time() - t0, **test}
    logging.info("%s (state of step %d)", _headline("test", test), result["best_step"])
    summaries.scalars(total, test, "test/")
    evaluation.write_report(workdir, "test", result, run.data.card.class_names)
    evaluation.write_json(os.path.join(workdir, wdir.TRAIN_HISTORY), history)
    return result


def evaluate_workdir(c, workdir: str, splits: tuple[str, ...] = ("validation", "test")) -> dict[str, dict]:
    """`--mode=eval`: the workdir's best state (else its latest) on each split that exists; reports written."""
    checkpointing.require_checkpoints(workdir)
    run = prepare(c, splits=())
    ckpt = Checkpoints(workdir, keep=c.keep_checkpoints)
    try:
        step, state = wdir.restore_for_evaluation(workdir, c, ckpt, run.abstract_state)
        results = {}
        for split in splits:
            if split in run.data.splits:
                results[split] = {"checkpoint_step": step, **_evaluate(run, state, split)}
                logging.info("%s (state of step %d)", _headline(split, results[split]), step)
                evaluation.write_report(workdir, split, results[split], run.data.card.class_names)
        return results
    finally:
        ckpt.close()

r"""Train or evaluate AV-CANet.

  python -m avcanet_jax.main --config=configs/base.py --workdir=W [--config.batch_size=16 ...]
  python -m avcanet_jax.main --config=configs/base.py --workdir=W --mode=eval
  python -m avcanet_jax.main --config=configs/demo.py --workdir=/tmp/demo   # builds its data if missing

The same command runs on every host of a TPU slice or SLURM job: with several processes it first calls
`jax.distributed.initialize()`, which finds the coordinator from the environment. The logic lives in
`avcanet_jax.train`.
"""

from __future__ import annotations

import json

import jax
from absl import app, flags
from ml_collections import config_flags

from avcanet_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/base.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and TensorBoard files go here.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if possible) or eval (best state).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): auto = when the environment shows several processes.",
)  # fmt: skip
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    c = cli.config_value(_CONFIG)
    runtime.start(_DISTRIBUTED.value)
    from avcanet_jax import train

    runtime.ensure_data(c.data.dataset, c.data.data_dir)
    if _MODE.value == "train":
        result = train.train_and_evaluate(c, _WORKDIR.value)
    else:
        result = train.evaluate_workdir(c, _WORKDIR.value)
    if jax.process_index() == 0:
        print(json.dumps(_summary(result, _MODE.value)), flush=True)


def _summary(result: dict, mode: str) -> dict:
    """The headline figures, one JSON line on stdout (per split for --mode=eval)."""
    keys = ("stopped_at", "best_step", "checkpoint_step", "accuracy", "uar", "weighted_f1", "polarity_accuracy",
            "audio_only_accuracy", "visual_only_accuracy", "elapsed_s")  # fmt: skip

    def pick(m):
        return {k: m[k] for k in keys if k in m}

    return {split: pick(m) for split, m in result.items()} if mode == "eval" else pick(result)


if __name__ == "__main__":
    cli.run(main)

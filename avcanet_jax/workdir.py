"""What a training workdir holds besides its checkpoints, and the checks made before any of it changes.

- `config.json`: the config of the latest (re)start, from which `--mode=eval` and `predict` rebuild the
  model; `config_history.jsonl`: one line per (re)start (step, time, config), so no start is lost.
- `train_history.json`: the logged training metrics of every run in the workdir, resumed ones appended.

A run that is refused (a config the checkpoints cannot be restored into, another data stream) must leave
all of this as it was, so the checks here run before anything is written, and their errors name the
config fields that differ from the workdir's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import jax
import ml_collections

from avcanet_jax.config_checks import ConfigError

CONFIG = "config.json"
CONFIG_HISTORY = "config_history.jsonl"
TRAIN_HISTORY = "train_history.json"


def replace_file(path: str, text: str) -> None:
    """Writes `path` whole or not at all (a temporary file, then a rename). Other processes of the job
    read `config.json` while process 0 rewrites it; a plain rewrite let one of them read it truncated
    (seen once in CI: that process stopped, and the other timed out waiting for it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(temporary, path)


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config the workdir's latest run started with, or None for a workdir without one."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return ml_collections.ConfigDict(json.load(fh))


def _flat(d: Mapping, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if hasattr(v, "to_dict"):
            v = v.to_dict()
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(saved, requested) -> dict[str, tuple[object, object]]:
    """{dotted field: (saved value, requested value)} for every field that differs (or exists in one only)."""
    a = _flat(json.loads(saved.to_json_best_effort()))
    b = _flat(json.loads(requested.to_json_best_effort()))
    pairs = {k: (a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(set(a) | set(b))}
    return {k: (old, new) for k, (old, new) in pairs.items() if old != new}


def _describe(diff: dict[str, tuple[object, object]], limit: int = 8) -> str:
    items = [f"config.{k} is {new!r} here but {old!r} in the workdir" for k, (old, new) in diff.items()]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def shapes_of(state) -> dict[str, tuple[int, ...]]:
    """{parameter path: shape} of a state tree (arrays, ShapeDtypeStructs or Orbax's saved metadata),
    with paths spelt the same way for all three."""

    def name(key) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    def shape(leaf) -> tuple[int, ...]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # Orbax saves a typed key as its raw data.
            return jax.eval_shape(jax.random.key_data, leaf).shape
        return tuple(leaf.shape)

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        parts = [name(k) for k in path]
        if parts and parts[-1] == "value":
            parts = parts[:-1]
        out[".".join(parts)] = shape(leaf)
    return out


def check_checkpoint_fits(workdir: str, c, ckpt, abstract_state, step: int, best: bool = False) -> None:
    """Raises ConfigError, naming the config fields that differ from the workdir's `config.json`, when
    the checkpoint of `step` (read as metadata, not restored) holds another model or optimizer than the
    one `c` describes (`abstract_state`)."""
    saved_shapes, wanted_shapes = shapes_of(ckpt.saved_state(step, best)), shapes_of(abstract_state)
    if saved_shapes == wanted_shapes:
        return
    what = "best" if best else "latest"
    only_saved = sorted(set(saved_shapes) - set(wanted_shapes))
    only_wanted = sorted(set(wanted_shapes) - set(saved_shapes))
    reshaped = sorted(k for k in set(saved_shapes) & set(wanted_shapes) if saved_shapes[k] != wanted_shapes[k])
    examples = (
        [f"{k} {saved_shapes[k]} -> {wanted_shapes[k]}" for k in reshaped[:2]]
        + [f"{k} only in the checkpoint" for k in only_saved[:2]]
        + [f"{k} not in the checkpoint" for k in only_wanted[:2]]
    )
    saved = saved_config(workdir)
    if saved is not None:
        diff = config_diff(saved, c)
        model = {k: v for k, v in diff.items() if k.split(".")[0] in ("model", "optimizer", "grad_accumulation")}
        fields = _describe(model or diff) if diff else "no config field differs from its config.json"
    else:
        fields = f"{workdir} has no {CONFIG} to compare with"
    raise ConfigError(
        f"the {what} checkpoint (step {step}) in {workdir} holds another model than this config builds "
        f"({len(reshaped)} arrays reshaped, {len(only_saved)} missing, {len(only_wanted)} new; e.g. "
        f"{', '.join(examples)}): {fields}. Use the workdir's settings (its {CONFIG}), or another --workdir"
    )


def restore_for_evaluation(workdir: str, c, ckpt, abstract_state, prefer_best: bool = True):
    """(step, state): the workdir's best state (else its latest), checked against the model `c` builds
    before Orbax is asked to restore it."""
    step, best = ckpt.chosen(prefer_best)
    check_checkpoint_fits(workdir, c, ckpt, abstract_state, step, best)
    return step, ckpt.restore_chosen(abstract_state, step, best)


def record_start(workdir: str, c, step: int) -> list[str]:
    """Writes the config this (re)start runs with (process 0); returns the fields that changed since the
    workdir's previous start, for the log."""
    previous = saved_config(workdir)
    changed = list(config_diff(previous, c)) if previous is not None else []
    if jax.process_index() == 0:
        text = c.to_json_best_effort(indent=1, sort_keys=True)
        replace_file(os.path.join(workdir, CONFIG), text)
        entry = {"start_step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": json.loads(text)}
        with open(os.path.join(workdir, CONFIG_HISTORY), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
    return changed


def train_history(workdir: str, upto_step: int) -> list[dict]:
    """The logged metrics of earlier runs up to `upto_step` (the checkpoint a resumed run starts from;
    later entries are trained again and logged again)."""
    path = os.path.join(workdir, TRAIN_HISTORY)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [h for h in json.load(fh) if h["step"] <= upto_step]

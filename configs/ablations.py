"""The paper's ablation study (SPEC §3-4), one switch per run on top of a recipe.

  python -m avcanet_jax.main --config=configs/ablations.py:no_local --workdir=W          # paper recipe
  python -m avcanet_jax.main --config=configs/ablations.py:demo/no_local --workdir=W     # demo scale
  python -m avcanet_jax.protocol --config=configs/demo.py --ablations=all --workdir=W    # the whole table

Names: ce (plain cross-entropy instead of EP-CE), fusion_sum, fusion_gated, fusion_film (instead of
concatenation), no_local, no_global, no_lgf (Local-Global Fusion stages off), audio_only, visual_only.
"""

from __future__ import annotations

from configs import base, demo

RECIPES = {"base": base, "demo": demo}


ABLATIONS = {
    "ce": {"loss": "ce"},
    "fusion_sum": {"model.fusion": "sum"},
    "fusion_gated": {"model.fusion": "gated"},
    "fusion_film": {"model.fusion": "film"},
    "no_local": {"model.use_local": False},
    "no_global": {"model.use_global": False},
    "no_lgf": {"model.use_local": False, "model.use_global": False},
    "audio_only": {"model.modalities": "audio"},
    "visual_only": {"model.modalities": "visual"},
}


def apply(c, name: str):
    """`c` with ablation `name` switched on (in place), recorded as `c.ablation`."""
    for path, value in ABLATIONS[name].items():
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    c.ablation = name
    return c


def get_config(arg: str = ""):
    recipe, _, name = arg.rpartition("/")
    recipe = recipe or "base"
    if recipe not in RECIPES or name not in ABLATIONS:
        raise ValueError(
            f"configs/ablations.py:{arg}: expected [base/|demo/]NAME with NAME in {sorted(ABLATIONS)}, "
            f"recipe in {sorted(RECIPES)}"
        )
    return apply(RECIPES[recipe].get_config(), name)

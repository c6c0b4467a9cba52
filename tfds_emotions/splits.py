"""Seeded, stratified assignment of videos to train/validation/test, and the paper's dataset variants.

The official eMotions splits are not published and the authors validate on their test list (SPEC §1).
Here validation and test are always disjoint, every draw is seeded, and the result depends only on the
set of keys (sorted before drawing), never on file-system order or worker count.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tfds_emotions.sources import Item, Skip, SplitLists

SPLITS = ("train", "validation", "test")


def _rng(seed: int, *tags: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(t.encode()) for t in tags)])


def _by_class(keys: Iterable[str]) -> dict[str, list[str]]:
    out = collections.defaultdict(list)
    for k in sorted(set(keys)):
        out[k.split("/", 1)[0]].append(k)
    return dict(sorted(out.items()))


def stratified_split(keys: Iterable[str], fractions: Mapping[str, float], seed: int, tag: str = "") -> dict[str, str]:
    """Maps each key to a split name so that every class is divided in the given fractions.

    Per class the keys are shuffled with a generator seeded by (seed, tag, class) and cut at rounded
    cumulative fractions, so adding a video to one class never moves videos of another.
    """
    names = list(fractions)
    cum = np.cumsum([fractions[n] for n in names]) / sum(fractions.values())
    out = {}
    for cls, ks in _by_class(keys).items():
        order = _rng(seed, tag, cls).permutation(len(ks))
        cuts = np.round(cum * len(ks)).astype(int)
        for rank, idx in enumerate(order):
            out[ks[idx]] = names[int(np.searchsorted(cuts, rank, side="right"))]
    return out


def undersample(keys: Iterable[str], per_class: int | None, seed: int, tag: str) -> set[str]:
    """A seeded subset with at most `per_class` keys of each class (default: the smallest class's size)."""
    groups = _by_class(keys)
    n = min(len(v) for v in groups.values()) if per_class is None else per_class
    keep = set()
    for cls, ks in groups.items():
        order = _rng(seed, tag, cls).permutation(len(ks))
        keep.update(ks[i] for i in order[:n])
    return keep


def dedupe(items: Sequence[Item]) -> tuple[list[Item], list[Skip]]:
    """Keeps the first item of each key (items arrive sorted by path) and reports the others."""
    seen, kept, skips = {}, [], []
    for it in items:
        if it.key in seen:
            skips.append(Skip(it.key, "duplicate_id", f"{it.path} duplicates {seen[it.key]}"))
        else:
            seen[it.key] = it.path
            kept.append(it)
    return kept, skips


def assign(
    items: Sequence[Item],
    lists: SplitLists | None,
    *,
    variant: str,
    fractions: Mapping[str, float],
    validation_fraction_of_train: float,
    seed: int,
) -> tuple[dict[str, list[Item]], list[Skip]]:
    """Splits deduplicated items into train/validation/test for a dataset variant.

    Variants (our documented reconstruction; the paper's sampling rules are not public):
      "full": all videos.
      "balanced": every class undersampled to the size of the smallest class, then split.
      "test_oriented": a class-balanced test set (equal count per class, the smallest class's share of
        `fractions["test"]` of the data), the remaining videos split into train and validation.
    With split files, their train list is the train pool (validation is carved from it, stratified) and
    their test list is test; "balanced" undersamples each pool, "test_oriented" balances the test pool.
    """
    by_key = {it.key: it for it in items}
    skips: list[Skip] = []
    if lists is not None:
        listed = set()
        pools = {}
        for pool, keys in lists.pools.items():
            present = []
            for k in keys:
                if k in listed:
                    skips.append(Skip(k, "duplicate_in_split_files", lists.source))
                    continue
                listed.add(k)
                if k in by_key:
                    present.append(k)
                else:
                    skips.append(Skip(k, "missing_file", f"named in {lists.source}"))
            pools[pool] = present
        skips += [Skip(k, "not_in_split_files", lists.source) for k in sorted(set(by_key) - listed)]
        if variant == "balanced":
            pools = {p: sorted(undersample(ks, None, seed, p)) for p, ks in pools.items() if ks}
        elif variant == "test_oriented":
            pools["test"] = sorted(undersample(pools["test"], None, seed, "test"))
        val = validation_fraction_of_train
        carve = stratified_split(pools.get("train", []), {"train": 1 - val, "validation": val}, seed, "val")
        assignment = {**carve, **{k: "test" for k in pools.get("test", [])}}
    else:
        keys = sorted(by_key)
        if variant == "balanced":
            keys = sorted(undersample(keys, None, seed, "balanced"))
            assignment = stratified_split(keys, fractions, seed)
        elif variant == "test_oriented":
            groups = _by_class(keys)
            per_class = min(len(v) for v in groups.values())
            n_test = int(round(fractions["test"] * len(keys) / len(groups)))
            test = undersample(keys, min(n_test, per_class // 2), seed, "test_oriented")
            rest = {n: f for n, f in fractions.items() if n != "test"}
            assignment = {**stratified_split(set(keys) - test, rest, seed), **{k: "test" for k in test}}
        elif variant == "full":
            assignment = stratified_split(keys, fractions, seed)
        else:
            raise ValueError(f"unknown variant {variant!r}")
    reported = {s.key for s in skips}
    skips += [Skip(k, "not_sampled_for_variant", variant) for k in sorted(set(by_key) - set(assignment) - reported)]
    out = {s: [] for s in SPLITS}
    for key, split in sorted(assignment.items()):
        out[split].append(by_key[key])
    return out, skips

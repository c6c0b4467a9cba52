"""The Grain pipeline on a real build: shapes, determinism, exact resume, complete and disjoint slices."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from avcanet_jax import input_pipeline as ip
from avcanet_jax.clip_sampling import ClipSpec

SMALL = ClipSpec(num_segments=4, frames_per_segment=4, crop_size=32, audio_frames=256)


def _cfg(data_dir: str, **kw) -> ip.PipelineConfig:
    return ip.PipelineConfig(dataset="emotions/full", data_dir=data_dir, clip=SMALL, global_batch_size=4, **kw)


class _Tagged:
    """A real split whose labels are replaced by example positions, to see which examples come out."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return {**self.source[i], "label": i}


def _take(iterator, n):
    return [jax.tree.map(np.copy, b) for b in itertools.islice(iterator, n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_shapes_and_dtypes(tiny_dataset):
    batch = next(iter(ip.train_dataset(_cfg(tiny_dataset))))
    assert batch["video"].shape == (4, 4, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert batch["audio"].shape == (4, 4, 64, 32) and batch["audio"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["mask"].all()
    full = next(
        iter(ip.train_dataset(ip.PipelineConfig(dataset="emotions/full", data_dir=tiny_dataset, global_batch_size=2)))
    )
    assert full["video"].shape == (2, 16, 8, 112, 112, 3) and full["audio"].shape == (2, 16, 256, 32)


def test_same_seed_same_batches_other_seed_differs(tiny_dataset):
    a = _take(iter(ip.train_dataset(_cfg(tiny_dataset))), 3)
    b = _take(iter(ip.train_dataset(_cfg(tiny_dataset))), 3)
    c = _take(iter(ip.train_dataset(_cfg(tiny_dataset, seed=1))), 3)
    _assert_same(a, b)
    assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c, strict=True))


def test_resume_mid_epoch_and_across_epochs_is_exact(tiny_dataset):
    cfg = _cfg(tiny_dataset)
    expected = _take(iter(ip.train_dataset(cfg)), 9)  # 3 batches: 12 of the ~21 examples, mid-epoch.
    resumed = iter(ip.train_dataset(cfg, start_step=3))
    _assert_same(_take(resumed, 6), expected[3:])  # Runs into the next epoch.


def test_each_epoch_visits_the_slice_once_in_a_new_order(tiny_dataset):
    source = _Tagged(ip.data_source(_cfg(tiny_dataset), "train"))
    n = len(source)
    cfg = ip.PipelineConfig(clip=SMALL, global_batch_size=1)
    labels = [int(b["label"][0]) for b in _take(iter(ip.train_dataset(cfg, source=source)), 2 * n)]
    assert sorted(labels[:n]) == list(range(n)) and sorted(labels[n:]) == list(range(n))
    assert labels[:n] != labels[n:]


def test_process_shares_make_the_one_process_batch_for_any_process_count(tiny_dataset):
    source = _Tagged(ip.data_source(_cfg(tiny_dataset), "train"))
    cfg = ip.PipelineConfig(clip=SMALL, global_batch_size=4)
    expected = _take(iter(ip.train_dataset(cfg, source=source)), 8)
    for count in (2, 4):
        shares = [
            _take(iter(ip.train_dataset(cfg, source=source, process_index=p, process_count=count)), 8)
            for p in range(count)
        ]
        for step, batch in enumerate(expected):  # Same examples, same augmentation draws, same order.
            joined = {k: np.concatenate([s[step][k] for s in shares]) for k in batch}
            _assert_same([joined], [batch])
            assert len(set(batch["label"].tolist())) == 4  # Disjoint within a step.
    # Resuming with another process count continues the same stream.
    later = [_take(iter(ip.train_dataset(cfg, source=source, process_index=p, process_count=2, start_step=5)), 3)
             for p in range(2)]  # fmt: skip
    for step in range(3):
        np.testing.assert_array_equal(np.concatenate([later[0][step]["label"], later[1][step]["label"]]),
                                      expected[5 + step]["label"])  # fmt: skip


def test_eval_visits_every_example_once_with_padding(tiny_dataset):
    cfg = dataclasses.replace(_cfg(tiny_dataset), global_batch_size=3)  # One example per process and step.
    source = ip.data_source(cfg, "train")
    n = len(source)
    indices, batches = [], []
    for p in range(3):
        batches.append(_take(iter(ip.eval_dataset(cfg, "train", source=source, process_index=p, process_count=3)), 100))
        for b in batches[-1]:
            indices.extend(b["index"][b["mask"]].tolist())
    assert sorted(indices) == list(range(n))
    assert len({len(b) for b in batches}) == 1  # Every process steps the same number of times.
    again = _take(iter(ip.eval_dataset(cfg, "train", source=source, process_index=0, process_count=3)), 100)
    _assert_same(batches[0], again)  # Evaluation is deterministic.


def test_worker_processes_give_the_same_batches_and_resume(tiny_dataset):
    cfg = _cfg(tiny_dataset)
    expected = _take(iter(ip.train_dataset(cfg)), 4)
    _assert_same(_take(iter(ip.train_dataset(_cfg(tiny_dataset, num_workers=2))), 2), expected[:2])
    resumed = iter(ip.train_dataset(_cfg(tiny_dataset, num_workers=2), start_step=2))
    _assert_same(_take(resumed, 2), expected[2:])


def test_global_batches_are_sharded_over_the_mesh(tiny_dataset):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    cfg = ip.PipelineConfig(dataset="emotions/full", data_dir=tiny_dataset, clip=SMALL, global_batch_size=8)
    sharding = ip.batch_sharding(mesh)
    batch = next(ip.global_batches(iter(ip.train_dataset(cfg)), sharding))
    assert batch["video"].shape == (8, 4, 4, 32, 32, 3)
    assert batch["video"].sharding == sharding
    shard_rows = {(s.index[0].start, s.index[0].stop) for s in batch["label"].addressable_shards}
    assert shard_rows == {(0, 2), (2, 4), (4, 6), (6, 8)}  # Split over "data", replicated over "model".


def test_too_small_split_is_a_clear_error(tiny_dataset):
    with pytest.raises(ValueError, match="fewer than a global batch"):
        ip.train_dataset(ip.PipelineConfig(dataset="emotions/full", data_dir=tiny_dataset, global_batch_size=64))


def test_global_batch_must_split_over_processes(tiny_dataset):
    with pytest.raises(ValueError, match="divisible by 3 processes"):
        ip.eval_dataset(_cfg(tiny_dataset), "train", process_index=0, process_count=3)

"""VideoEmotion-8 and Ekman-6 builders on generated media in each layout, and the protocol runner."""

from __future__ import annotations

import json
import os

import media_factory as mf
import numpy as np
import pytest
import simplejpeg
import tensorflow_datasets as tfds

from avcanet_jax import protocol
from avcanet_jax.cli import UserError
from configs import ekman6, ve8
from tfds_emotions import build, synthetic
from tfds_emotions.classes import EKMAN6_CLASSES, EKMAN6_POLARITY, POLARITIES, VE8_CLASSES, VE8_POLARITY


def _clip(path: str, k: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    synthetic.write_clip(path, k % 6, np.random.default_rng(k))


def _examples(name: str, data_dir: str) -> dict[str, dict]:
    out = {}
    for split, source in tfds.data_source(name, data_dir=data_dir).items():
        for i in range(len(source)):
            out[source[i]["video_id"].decode()] = {**source[i], "split": split}
    return out


@pytest.fixture(scope="module")
def ve8_raw(tmp_path_factory) -> str:
    """6 clips per class in the release's `VideoEmotionDataset<n>-<Class>/` folders, and two UCF-style
    splits: in split 1 clip 5 of every class is test, in split 2 clip 0."""
    root = str(tmp_path_factory.mktemp("ve8_raw"))
    for i, c in enumerate(VE8_CLASSES):
        for k in range(6):
            _clip(os.path.join(root, f"VideoEmotionDataset{i + 1}-{c}", f"{k}.mp4"), 6 * i + k)
    for split, test_clip in ((1, 5), (2, 0)):
        with open(os.path.join(root, f"trainlist{split:02d}.txt"), "w") as fh:
            fh.writelines(
                f"{c}/{k}.mp4 {i + 1}\n" for i, c in enumerate(VE8_CLASSES) for k in range(6) if k != test_clip
            )
        with open(os.path.join(root, f"testlist{split:02d}.txt"), "w") as fh:
            fh.writelines(f"{c}/{test_clip}.mp4\n" for c in VE8_CLASSES)
    return root


@pytest.fixture(scope="module")
def ve8_data(ve8_raw, tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("ve8_data"))
    for split in ("split01", "split02"):
        build.build(split, data_dir, ve8_raw, dataset="video_emotion8", num_workers=1)
    return data_dir


def test_ve8_split_lists_give_the_official_test_and_a_validation_carved_from_train(ve8_data):
    for name, test_clip in (("split01", 5), ("split02", 0)):
        examples = _examples(f"video_emotion8/{name}", ve8_data)
        by_split = {
            s: sorted(k for k, e in examples.items() if e["split"] == s) for s in ("train", "validation", "test")
        }
        assert by_split["test"] == sorted(f"{c}/{test_clip}" for c in VE8_CLASSES)
        # Validation is 1/8 of each class's 5 train-list videos (rounded per class, so classes never interact).
        assert len(by_split["validation"]) == 8 and len(by_split["train"]) == 32
        assert not set(by_split["validation"]) & set(by_split["test"])
        for key, e in examples.items():
            cls = key.split("/")[0]
            assert e["label"] == VE8_CLASSES.index(cls)
            assert e["polarity"] == POLARITIES.index(VE8_POLARITY[cls])


def test_ve8_without_the_split_files_is_a_clear_error(ve8_raw, tmp_path):
    with pytest.raises(ValueError, match="needs the benchmark's split files for split 3"):
        build.build("split03", str(tmp_path), ve8_raw, dataset="video_emotion8", num_workers=1)


def test_ve8_processed_layout_with_one_annotation_json_per_split(tmp_path):
    root = tmp_path / "ve8_processed"
    db = {1: {}, 2: {}}
    for c in VE8_CLASSES[:2]:
        for k in range(2):
            folder = root / "img" / c / str(k)
            folder.mkdir(parents=True)
            for i in range(1, 19):
                (folder / f"{i:06d}.jpg").write_bytes(simplejpeg.encode_jpeg(np.full((120, 160, 3), 7 * i, np.uint8)))
            mf.write_audio(str(root / "mp3" / c / f"{k}.mp3"), seconds=1.0, codec="mp3")
            for split in (1, 2):
                subset = "validation" if k == split - 1 else "training"  # VAANet calls its test "validation".
                db[split][f"{c}/{k}"] = {"subset": subset, "annotations": {"label": c}}
    for split in (1, 2):
        (root / f"ve8_{split:02d}.json").write_text(json.dumps({"labels": list(VE8_CLASSES), "database": db[split]}))
    build.build("split02", str(tmp_path / "data"), str(root), dataset="video_emotion8", num_workers=1)
    examples = _examples("video_emotion8/split02", str(tmp_path / "data"))
    assert sorted(k for k, e in examples.items() if e["split"] == "test") == ["Anger/1", "Anticipation/1"]
    assert all(len(e["frames"]) == 18 and e["has_audio"] for e in examples.values())


def test_ekman6_train_and_test_folders(tmp_path):
    root = tmp_path / "ekman6_raw"
    for i, c in enumerate(EKMAN6_CLASSES):
        for k, split in enumerate(("train", "train", "test")):
            _clip(str(root / split / c.capitalize() / f"{c}_{k}.mp4"), 3 * i + k)
    build.build("standard", str(tmp_path / "data"), str(root), dataset="ekman6", num_workers=1)
    examples = _examples("ekman6/standard", str(tmp_path / "data"))
    assert sorted(k for k, e in examples.items() if e["split"] == "test") == [f"{c}/{c}_2" for c in EKMAN6_CLASSES]
    assert all(e["polarity"] == POLARITIES.index(EKMAN6_POLARITY[k.split("/")[0]]) for k, e in examples.items())


def test_benchmark_configs_match_their_builders():
    assert ve8.get_config().model.num_classes == len(VE8_CLASSES)
    assert len(ve8.get_config().protocol_datasets) == 10
    assert ekman6.get_config().model.num_classes == len(EKMAN6_CLASSES)
    assert [r[0] for r in protocol.runs(ekman6.get_config())] == [f"standard_seed{s}" for s in (1, 2, 3)]


def test_protocol_trains_every_split_and_reports_mean_and_std(ve8_data, tmp_path):
    from conftest import tiny_train_config

    c = tiny_train_config(ve8_data, num_epochs=1, select_on_validation=True)
    c.model.num_classes = 8
    c.model.use_local = c.model.use_global = False  # Keeps the compile short; the protocol is what is tested.
    c.protocol_datasets = ("video_emotion8/split01", "video_emotion8/split02")
    summary = protocol.run_protocol(c, str(tmp_path))
    assert [r["run"] for r in summary["runs"]] == ["split01", "split02"]
    accs = [r["accuracy"] for r in summary["runs"]]
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert summary["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    for run in ("split01", "split02"):
        with open(tmp_path / run / "eval" / "test_metrics.json") as fh:
            assert json.load(fh)["num_examples"] == 8
    assert json.loads((tmp_path / "summary.json").read_text())["num_runs"] == 2
    low, high = summary["mean_interval"]["accuracy"]  # t(0.975, 1 dof) = 12.706.
    assert high - low == pytest.approx(2 * 12.706 * np.std(accs, ddof=1) / np.sqrt(2), rel=1e-4)
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0].startswith("| run | accuracy | uar |") and table[-2].startswith("| mean ± std (2 runs) |")
    assert table[-1].startswith("| 95% interval of the mean |")
    again = protocol.run_protocol(c, str(tmp_path))  # Finished runs are read back, not retrained.
    assert again["runs"] == summary["runs"]


def test_ablation_study_trains_each_variant_once_and_tables_them_against_the_full_model(ve8_data, tmp_path):
    from conftest import tiny_train_config

    # The protocol test's split01 run is the "full" model here, so its compiled steps are cache hits.
    c = tiny_train_config(ve8_data, num_epochs=1, select_on_validation=True)
    c.model.num_classes = 8
    c.model.use_local = c.model.use_global = False
    c.data.dataset = "video_emotion8/split01"
    with pytest.raises(UserError, match="--ablations: unknown \\['no_such'\\]"):
        protocol.ablation_runs(c, ["audio_only", "no_such"])
    table = protocol.run_ablations(c, str(tmp_path), ["audio_only"])
    assert [r["variant"] for r in table["variants"]] == ["full", "audio_only"]
    full, audio = table["variants"]
    assert "versus_full" not in full and audio["accuracy"] - full["accuracy"] == pytest.approx(
        audio["versus_full"]["difference"]["accuracy"]
    )
    low, high = audio["versus_full"]["difference_interval"]["uar"]
    assert low <= audio["versus_full"]["difference"]["uar"] <= high
    assert 0 < audio["versus_full"]["mcnemar"]["p_value"] <= 1
    with open(tmp_path / "audio_only" / "config.json") as fh:
        assert json.load(fh)["model"]["modalities"] == "audio"
    md = (tmp_path / "ablations.md").read_text().splitlines()
    assert md[0].startswith("| variant | accuracy |") and md[3].startswith("| audio_only | ")
    again = protocol.run_ablations(c, str(tmp_path), ["audio_only"])  # Read back, not retrained:
    assert again == json.loads((tmp_path / "ablations.json").read_text())
    for name in ("full", "audio_only"):  # one start each.
        assert len((tmp_path / name / "config_history.jsonl").read_text().splitlines()) == 1

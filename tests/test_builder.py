"""The `emotions` builder end to end on generated media, bad inputs included, read back with data_source."""

from __future__ import annotations

import filecmp
import json
import os
import shutil

import media_factory as mf
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import simplejpeg
import tensorflow_datasets as tfds

from avcanet_jax.cli import UserError
from tfds_emotions import build
from tfds_emotions.classes import EMOTIONS_CLASSES


def _report(builder) -> dict:
    with open(os.path.join(os.fspath(builder.data_path), "build_report.json")) as fh:
        return json.load(fh)


def _all_examples(data_dir: str, name: str = "emotions/full") -> dict[str, dict]:
    out = {}
    for split, source in tfds.data_source(name, data_dir=data_dir).items():
        for i in range(len(source)):
            ex = source[i]
            out[ex["video_id"].decode()] = {**ex, "split": split}
    return out


@pytest.fixture(scope="module")
def messy_tree(tmp_path_factory) -> str:
    """A raw class-folder tree with good clips and every kind of bad input the builder must survive."""
    root = str(tmp_path_factory.mktemp("raw"))
    mf.good_clips(root, per_class=7)  # 7 per class: 70/10/20 rounds to 5/1/1.
    exc, fear, sad = (os.path.join(root, c) for c in ("Excitation", "Fear", "Sadness"))
    mf.write_video(os.path.join(exc, "rotated.mp4"), rotation=90, width=64, height=48)
    times = list(np.cumsum(np.r_[0, np.tile([0.04, 0.16], 10)])[:20])
    mf.write_video(os.path.join(exc, "vfr.mp4"), frame_times=times)
    mf.write_video(os.path.join(fear, "silent.mp4"), audio=False)
    mf.corrupt_audio_packets(mf.write_video(os.path.join(fear, "bad_audio.mp4"), num_frames=40))
    mf.truncate(mf.write_video(os.path.join(fear, "truncated.mp4"), num_frames=40))
    mf.write_video(os.path.join(fear, "short.mp4"), num_frames=10)
    mf.write_audio(os.path.join(fear, "audio_only.mp4"), fmt="mp4")
    open(os.path.join(fear, "empty.mp4"), "wb").close()
    with open(os.path.join(fear, "not_video.mp4"), "w") as fh:
        fh.write("this is not a video\n" * 50)
    with open(os.path.join(fear, "cover.jpg"), "wb") as fh:
        fh.write(simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    mf.write_video(os.path.join(root, "Joy", "unknown.mp4"))  # Not an eMotions class.
    mf.write_video(os.path.join(root, "Sad", "v0.mov"), codec="mpeg4")  # "Sad" = Sadness: duplicates Sadness/v0.
    with open(os.path.join(root, "README.txt"), "w") as fh:  # A stray file at the top: listed as not used.
        fh.write("notes")
    mf.write_video(os.path.join(root, "stray.mp4"))  # A video outside any class folder.
    return root


@pytest.fixture(scope="module")
def messy_build(messy_tree, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    return build.build("full", data_dir, messy_tree, num_workers=1), data_dir


def test_bad_inputs_are_counted_not_fatal(messy_build):
    builder, _ = messy_build
    report = _report(builder)
    assert report["not_used"]["counts"] == {
        "duplicate_id": 1, "not_a_video": 2, "not_in_a_class_folder": 1, "unknown_class": 1
    }  # fmt: skip
    not_used = {s["key"]: s["reason"] for s in report["not_used"]["items"]}
    assert not_used["README.txt"] == "not_a_video" and not_used["stray.mp4"] == "not_in_a_class_folder"
    dup = [s for s in report["not_used"]["items"] if s["reason"] == "duplicate_id"][0]
    assert dup["key"] == "Sadness/v0" and "Sad/v0.mov" in dup["detail"]
    skipped = {s["key"]: s["reason"] for r in report["splits"].values() for s in r["skipped"]}
    assert skipped == {
        "Fear/truncated": "unreadable",
        "Fear/short": "too_few_frames",
        "Fear/audio_only": "no_video_stream",
        "Fear/empty": "empty_file",
        "Fear/not_video": "unreadable",
    }
    total = sum(s.num_examples for s in builder.info.splits.values())
    assert total == 6 * 7 + 4  # Good clips, rotated, vfr, silent, bad_audio.
    assert sum(r["counts"].get("bad_audio_packets", 0) for r in report["splits"].values()) > 0


def test_examples_hold_decoded_media(messy_build):
    _, data_dir = messy_build
    examples = _all_examples(data_dir)
    ex = examples["Relaxation/v1"]
    assert ex["label"] == EMOTIONS_CLASSES.index("Relaxation") and ex["polarity"] == 0  # positive
    assert examples["Fear/v0"]["polarity"] == 2 and examples["Neutral/v0"]["polarity"] == 1
    frames = [simplejpeg.decode_jpeg(b) for b in ex["frames"]]
    assert min(frames[0].shape[:2]) == 112 and len(frames) == ex["source"]["num_frames"] >= 16
    assert ex["has_audio"] and ex["audio"].shape[1] == 32 and ex["audio"].dtype == np.float32
    assert np.all(np.diff(ex["timestamps"]) > 0)

    rotated = examples["Excitation/rotated"]
    img = simplejpeg.decode_jpeg(rotated["frames"][0])
    assert img.shape[0] > img.shape[1]  # Stored upright: 48x64 landscape with a 90° display matrix.
    assert (rotated["source"]["width"], rotated["source"]["height"]) == (48, 64)
    assert img[-5:, :, 0].mean() > 200 and img[:5, :, 0].mean() < 50  # The left band ends at the bottom.

    gaps = np.diff(examples["Excitation/vfr"]["timestamps"])
    np.testing.assert_allclose(sorted(set(np.round(gaps, 2))), [0.04, 0.16])

    silent = examples["Fear/silent"]
    assert not silent["has_audio"] and silent["audio"].shape == (0, 32)


def test_split_is_stratified_and_disjoint(messy_build):
    _, data_dir = messy_build
    examples = _all_examples(data_dir)
    splits = {s: {k for k, e in examples.items() if e["split"] == s} for s in ("train", "validation", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["validation"] & splits["test"])
    for cls in ("Relaxation", "Neutral", "Tension"):
        assert sum(k.startswith(cls) for k in splits["test"]) == 1


def test_output_is_identical_for_any_worker_count(messy_tree, messy_build, tmp_path):
    builder, _ = messy_build
    other = build.build("full", str(tmp_path), messy_tree, num_workers=2)
    files = sorted(f for f in os.listdir(builder.data_path) if "array_record" in f or f == "build_report.json")
    assert files and filecmp.cmpfiles(builder.data_path, other.data_path, files, shallow=False)[0] == files


def _assert_same_dataset(builder_a, builder_b) -> None:
    """Same splits and shards, the same examples in the same order with equal fields, the same report.

    Not the same bytes: a tf.Example's features are a protobuf map, which each process serialises in
    its own hash order, so even two local builds in two processes differ byte for byte.
    """
    assert builder_a.info.splits.keys() == builder_b.info.splits.keys()
    for name, split in builder_a.info.splits.items():
        assert split.shard_lengths == builder_b.info.splits[name].shard_lengths
    assert _report(builder_a)["splits"] == _report(builder_b)["splits"]
    assert _report(builder_a)["not_used"] == _report(builder_b)["not_used"]
    for split in builder_a.info.splits:
        a, b = builder_a.as_data_source(split=split), builder_b.as_data_source(split=split)
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert x["video_id"] == y["video_id"] and list(x["frames"]) == list(y["frames"])
            for key in ("label", "polarity", "timestamps", "audio", "has_audio"):
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{split}[{i}].{key}")
            assert x["source"] == y["source"]


def test_beam_build_matches_the_local_build(messy_tree, messy_build, tmp_path):
    builder, _ = messy_build
    options = "direct_num_workers=2,direct_running_mode=multi_processing"  # Beam's local runner, 2 processes.
    on_beam = build.build("full", str(tmp_path), messy_tree, beam_pipeline_options=options)
    _assert_same_dataset(builder, on_beam)
    assert not [f for f in os.listdir(on_beam.data_path) if f.endswith(".part.json")]  # Merged into the report.


def test_ucf_split_files(tmp_path):
    root = str(tmp_path / "raw")
    mf.good_clips(root, per_class=3)
    with open(os.path.join(root, "classInd.txt"), "w") as fh:
        fh.writelines(f"{i + 1} {c}\n" for i, c in enumerate(EMOTIONS_CLASSES))
    with open(os.path.join(root, "trainlist01.txt"), "w") as fh:
        fh.writelines(f"{c}/v{k}.mp4 {i + 1}\n" for i, c in enumerate(EMOTIONS_CLASSES) for k in (0, 1))
        fh.write("Fear/missing.mp4 2\n")
    with open(os.path.join(root, "testlist01.txt"), "w") as fh:
        fh.writelines(f"{c}/v2\n" for c in EMOTIONS_CLASSES if c != "Tension")
    builder = build.build("full", str(tmp_path / "data"), root, num_workers=1)
    report = _report(builder)
    assert report["not_used"]["counts"] == {"missing_file": 1, "not_in_split_files": 1}
    examples = _all_examples(str(tmp_path / "data"))
    test = sorted(k for k, e in examples.items() if e["split"] == "test")
    assert test == sorted(f"{c}/v2" for c in EMOTIONS_CLASSES if c != "Tension")
    assert sum(s.num_examples for name, s in builder.info.splits.items() if name != "test") == 12


def test_activitynet_json_and_balanced_variant(tmp_path):
    root = str(tmp_path / "raw")
    mf.good_clips(root, per_class=2)
    mf.good_clips(os.path.join(root, "extra"), per_class=1, seed=1, prefix="x")  # Nested class folders.
    db = {
        f"{c}/v{k}": {"subset": "training" if k == 0 else "validation", "annotations": {"label": c}}
        for c in EMOTIONS_CLASSES
        for k in (0, 1)
    }
    db["Fear/x0"] = {"subset": "training", "annotations": {"label": "Fear"}}
    with open(os.path.join(root, "annotations.json"), "w") as fh:
        json.dump({"labels": list(EMOTIONS_CLASSES), "database": db}, fh)
    builder = build.build("balanced", str(tmp_path / "data"), root, num_workers=1)
    report = _report(builder)
    # The extra clips other than Fear/x0 are not in the JSON; Fear/x0 is undersampled away in "balanced".
    assert report["not_used"]["counts"]["not_in_split_files"] == 5
    assert report["not_used"]["counts"]["not_sampled_for_variant"] == 1
    assert builder.info.splits["test"].num_examples == 6


def test_processed_layout_frames_and_mp3(tmp_path):
    root = tmp_path / "raw"
    for c in EMOTIONS_CLASSES[:2]:
        folder = root / "eMotions_imgs" / c / "clip1"
        folder.mkdir(parents=True)
        for i in range(1, 21):
            img = np.full((240, 427, 3), i * 10, np.uint8)
            (folder / f"{i:06d}.jpg").write_bytes(simplejpeg.encode_jpeg(img))
        (folder / "n_frames").write_text("20")
        mf.write_audio(str(root / "eMotions_mp3" / c / "clip1.mp3"), seconds=2.0, codec="mp3")
    builder = build.build("full", str(tmp_path / "data"), str(root), num_workers=1)
    examples = _all_examples(str(tmp_path / "data"))
    ex = examples["Excitation/clip1"]
    assert len(ex["frames"]) == 20 and ex["has_audio"]
    assert abs(ex["source"]["fps"] - 10.0) < 0.5  # 20 frames over the mp3's ~2 s.
    first, last = (simplejpeg.decode_jpeg(ex["frames"][i]) for i in (0, -1))
    assert first.shape[:2] == (112, 199) and first.mean() < last.mean()  # Numeric frame order kept.
    assert sum(s.num_examples for s in builder.info.splits.values()) == 2


def test_parquet_shards(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    clips = mf.good_clips(str(tmp_path / "clips"), per_class=2)
    rows = [(open(p, "rb").read(), os.path.basename(os.path.dirname(p)), os.path.basename(p)) for p in clips]
    rows.append((b"garbage" * 10, "Fear", "broken.mp4"))
    plain = pa.table(
        {
            "video_data": [r[0] for r in rows[:7]],
            "label": [r[1] for r in rows[:7]],
            "video_id": [r[2].replace("v", f"a{i}_") for i, r in enumerate(rows[:7])],
        }
    )
    pq.write_table(plain, root / "part-0.parquet", row_group_size=3)
    # Hugging Face style: a struct column {bytes, path} and integer labels named in the schema metadata.
    hf_names = list(reversed(EMOTIONS_CLASSES))
    hf = pa.table(
        {
            "video": [{"bytes": r[0], "path": r[2]} for r in rows[7:]],
            "label": [hf_names.index(r[1]) for r in rows[7:]],
            "id": [f"b{i}" for i in range(len(rows) - 7)],
        }
    )
    meta = {"info": {"features": {"label": {"names": hf_names, "_type": "ClassLabel"}}}}
    hf = hf.replace_schema_metadata({"huggingface": json.dumps(meta)})
    pq.write_table(hf, root / "part-1.parquet", row_group_size=2)
    builder = build.build("full", str(tmp_path / "data"), str(root), num_workers=2)
    examples = _all_examples(str(tmp_path / "data"))
    assert len(examples) == len(rows) - 1
    skipped = [s for r in _report(builder)["splits"].values() for s in r["skipped"]]
    assert [s["reason"] for s in skipped] == ["unreadable"]
    # Labels survive both layouts: each example's label matches the class of the clip it came from.
    for key, ex in examples.items():
        assert EMOTIONS_CLASSES[ex["label"]] == key.split("/")[0]
    assert len([k for k in examples if k.split("/")[1].startswith("b")]) == len(rows) - 8
    # On Beam (its in-process runner), each shard is one work item read once: the same dataset.
    _assert_same_dataset(builder, build.build("full", str(tmp_path / "beam"), str(root), beam_pipeline_options=""))


def test_missing_manual_dir_is_a_clear_error_that_leaves_nothing_behind(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(UserError, match="--manual_dir=.*nowhere: no such directory; emotions/full is built from"):
        build.build("full", str(data), str(tmp_path / "nowhere"), num_workers=1)
    with pytest.raises(UserError, match="--manual_dir is required"):
        build.build("full", str(data), None, num_workers=1)
    assert not data.exists() or not any(data.iterdir())  # No downloads/ or .config/ left in the data dir.


def test_empty_manual_dir_is_a_clear_error(tmp_path):
    (tmp_path / "raw" / "Fear").mkdir(parents=True)
    with pytest.raises(ValueError, match="no usable videos"):
        build.build("full", str(tmp_path / "data"), str(tmp_path / "raw"), num_workers=1)
    shutil.rmtree(tmp_path / "raw")

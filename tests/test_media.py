"""Decoding details that the builder tests do not pin down."""

from __future__ import annotations

import dataclasses

import media_factory as mf
import numpy as np

from tfds_emotions import media


def test_scaling_only_kept_frames_gives_the_same_result(tmp_path):
    path = mf.write_video(str(tmp_path / "v.mp4"), num_frames=40)
    opts = dataclasses.replace(media.MediaOptions(), max_frames=16)
    fast = media.decode_video(path, opts)  # The mp4 states 40 frames: only 16 are scaled.
    full = media._decode_pass(path, opts, 1, None)  # Every frame scaled, subsampled afterwards.
    slow = media._fields(
        full["frames"],
        full["times"],
        full["count"],
        full["samples"],
        source_fps=full["fps"],
        source_size=full["size"],
        duration=full["duration"],
        opts=opts,
        warnings={},
    )
    assert len(fast["frames"]) == 16 and fast["source"]["num_frames"] == 40
    assert fast["frames"] == slow["frames"]
    np.testing.assert_array_equal(fast["timestamps"], slow["timestamps"])
    np.testing.assert_allclose(fast["timestamps"][[0, -1]], [0.0, 3.9], rtol=1e-6)  # First and last kept.


def test_select_frames_is_uniform_and_keeps_ends():
    np.testing.assert_array_equal(media.select_frames(10, 16), np.arange(10))
    idx = media.select_frames(1000, 512)
    assert len(idx) == 512 and idx[0] == 0 and idx[-1] == 999 and np.all(np.diff(idx) >= 1)


def test_logmel_features(tmp_path):
    path = mf.write_video(str(tmp_path / "v.mp4"), num_frames=20)
    opts = dataclasses.replace(media.MediaOptions(), audio_features="logmel", n_mels=64)
    out = media.decode_video(path, opts)
    assert out["audio"].shape[1] == 64 and out["has_audio"]

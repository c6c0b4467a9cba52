"""TSN sampling, crops, augmentation and audio chunks on frames whose content names their index."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg

from avcanet_jax.clip_sampling import (
    ClipSpec,
    make_audio,
    make_eval_views,
    make_video,
    square_crop_box,
    tsn_indices,
)
from tfds_emotions import jpeg_rows

SPEC = ClipSpec()


def _numbered_frames(n: int, height: int = 112, width: int = 199) -> list[bytes]:
    """JPEG frames whose grey level is 2 * index, with a bright marker in the top-left corner."""
    out = []
    for i in range(n):
        img = np.full((height, width, 3), 2 * i, np.uint8)
        img[:16, :16] = 255
        out.append(simplejpeg.encode_jpeg(img, quality=100))
    return out


def test_eval_indices_are_segment_centres():
    idx = tsn_indices(200, SPEC, None)
    seg = 200 // 16
    expected = np.array([[i * seg + seg // 2 - 4 + k for k in range(8)] for i in range(16)])
    np.testing.assert_array_equal(idx, expected)


def test_train_indices_are_consecutive_within_their_segment():
    rng = np.random.default_rng(0)
    seg = 300 // 16
    starts = set()
    for _ in range(50):
        idx = tsn_indices(300, SPEC, rng)
        assert idx.shape == (16, 8)
        np.testing.assert_array_equal(np.diff(idx, axis=1), 1)
        offsets = idx[:, 0] - np.arange(16) * seg
        assert offsets.min() >= 0 and offsets.max() <= seg - 8 - 1
        starts.update(offsets.tolist())
    assert starts == set(range(seg - 8))  # Every allowed start is drawn, and no other.


def test_short_videos_are_loop_padded():
    idx = tsn_indices(20, SPEC, None)  # Padded to 128 = 0..19 repeated; segments of 8.
    np.testing.assert_array_equal(idx.reshape(-1), np.arange(128) % 20)
    spec = ClipSpec(num_segments=4, frames_per_segment=4, audio_frames=64)
    assert tsn_indices(5, spec, np.random.default_rng(0)).shape == (4, 4)


def test_crop_boxes():
    assert square_crop_box(199, 112, "center") == (43, 0, 112)
    assert square_crop_box(199, 112, "bottom_right") == (87, 0, 112)
    assert square_crop_box(112, 199, "top_right") == (0, 87, 112)
    assert square_crop_box(112, 199, "bottom_left") == (0, 0, 112)


def test_eval_clip_content_follows_indices():
    frames = _numbered_frames(100, height=199, width=112)  # Portrait.
    clip, info = make_video(frames, SPEC, None)
    assert clip.shape == (16, 8, 112, 112, 3) and clip.dtype == np.uint8
    assert info["position"] == "center" and info["augmentation"] is None
    levels = clip[:, :, 60:, :, :].mean(axis=(2, 3, 4)) / 2  # Below the corner marker.
    np.testing.assert_allclose(levels, info["indices"], atol=1)
    assert clip[:, :, :16, :16].mean() < 250  # Centre crop of a portrait frame misses the top marker.


def test_train_crop_and_augmentation_are_shared_by_all_frames():
    frames = _numbered_frames(64)
    spec = ClipSpec(augment_prob=1.0)
    plain_spec = ClipSpec(augment_prob=0.0)
    seen = set()
    for seed in range(40):
        clip, info = make_video(frames, spec, np.random.default_rng(seed))
        plain, plain_info = make_video(frames, plain_spec, np.random.default_rng(seed))
        assert info["position"] == plain_info["position"]
        np.testing.assert_array_equal(info["indices"], plain_info["indices"])
        seen.add(info["augmentation"])
        if info["augmentation"] == "hflip":
            np.testing.assert_array_equal(clip, plain[:, :, :, ::-1])
        elif info["augmentation"] == "brightness":
            assert 0.5 <= info["brightness"] <= 1.0
            np.testing.assert_allclose(clip, plain * info["brightness"], atol=1.01)
        else:
            assert abs(info["angle"]) <= 20
            centre = (slice(None), slice(None), slice(50, 62), slice(50, 62))
            np.testing.assert_allclose(clip[centre], plain[centre], atol=2)  # Rotation keeps the centre.
        # The marker sits in the same place in every frame: one crop for the whole video.
        marker = (clip.mean(axis=-1) > 250).reshape(128, -1)
        assert (marker == marker[0]).all()
    assert seen == {"hflip", "rotate", "brightness"}


def test_train_positions_cover_all_crops():
    frames = _numbered_frames(40, height=112, width=199)
    positions = {
        make_video(frames, ClipSpec(augment_prob=0), np.random.default_rng(s))[1]["position"] for s in range(60)
    }
    assert len(positions) == 5


def test_resize_when_crop_is_smaller_than_stored_frames():
    clip, _ = make_video(_numbered_frames(30), ClipSpec(crop_size=32, num_segments=4, audio_frames=64), None)
    assert clip.shape == (4, 8, 32, 32, 3)


def test_audio_is_tiled_cut_and_chunked():
    feats = np.arange(100 * 32, dtype=np.float32).reshape(100, 32)
    audio = make_audio(feats, SPEC)
    assert audio.shape == (16, 256, 32) and audio.dtype == np.float32
    flat = audio.reshape(4096, 32)
    np.testing.assert_array_equal(flat[:100], feats)
    np.testing.assert_array_equal(flat[100:200], feats)  # Loop-tiled.
    long = np.ones((5000, 32), np.float32)
    assert make_audio(long, SPEC).shape == (16, 256, 32)
    np.testing.assert_array_equal(make_audio(np.zeros((0, 32), np.float32), SPEC), 0)


def test_bad_clip_spec_names_the_field():
    with pytest.raises(ValueError, match="audio_frames"):
        ClipSpec(audio_frames=100)


@pytest.mark.parametrize("height, width", [(199, 112), (112, 199)])
def test_one_eval_view_is_the_eval_clip_and_views_cover_time_and_the_long_side(height, width):
    frames = _numbered_frames(100, height=height, width=width)
    clip, info = make_video(frames, SPEC, None)
    np.testing.assert_array_equal(make_eval_views(frames, SPEC, 1, 1)[0], clip)
    views = make_eval_views(frames, SPEC, 2, 3)  # Temporal-major: [t0 start, t0 centre, t0 end, t1 ...].
    assert views.shape == (6, 16, 8, 112, 112, 3)
    np.testing.assert_array_equal(views[1], make_eval_views(frames, SPEC, 2, 1)[0])  # Centre crop of time 0.
    # The start crop holds the top-left marker; the centre and end crops do not.
    assert views[0][:, :, :16, :16].mean() > 250 and views[1][:, :, :16, :16].mean() < 250
    # Time: in 200 frames (segments of 12), view 0 starts early in each segment, view 1 late, both inside it.
    early, late = (tsn_indices(200, SPEC, None, t, 2) for t in (0, 1))
    assert np.all(early[:, 0] == np.arange(16) * 12 + 1) and np.all(late[:, 0] == np.arange(16) * 12 + 3)
    assert np.all(late[:, -1] < np.arange(1, 17) * 12)


@pytest.mark.parametrize("height, width", [(199, 112), (112, 199), (213, 120)])
def test_clips_from_row_cuttable_frames_are_those_of_plain_frames(height, width):
    """Builder 2.0.0 stores frames that decode only a crop's rows; every clip (train positions and
    augmentations, evaluation views) must be the one the whole-frame decode of a plain JPEG gives."""
    rng = np.random.default_rng(0)
    walk = np.cumsum(np.cumsum(rng.normal(0, 3, (40, height, width, 3)), 1), 2)
    images = np.clip(walk - walk.mean() + 128, 0, 255).astype(np.uint8)
    plain = [simplejpeg.encode_jpeg(i, quality=85, colorspace="RGB", colorsubsampling="420") for i in images]
    rows = [jpeg_rows.encode(i, 85) for i in images]
    spec = ClipSpec(num_segments=4, frames_per_segment=4, audio_frames=64, augment_prob=0.5)
    positions = set()
    for seed in range(12):
        a, info = make_video(rows, spec, np.random.default_rng(seed))
        b, _ = make_video(plain, spec, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        positions.add(info["position"])
    assert len(positions) >= 4
    np.testing.assert_array_equal(make_eval_views(rows, spec, 2, 3), make_eval_views(plain, spec, 2, 3))
    np.testing.assert_array_equal(make_video(rows, spec, None)[0], make_video(plain, spec, None)[0])

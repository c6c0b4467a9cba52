"""Turning one stored example into one model input clip: TSN sampling, crops, augmentation, audio chunks.

Pure numpy on one example at a time, so the Grain pipeline can run it in worker processes. Follows the
paper's recipe (SPEC §2) and the authors' TSN code (loop padding, segment split, random or centre
snippet per segment); every shape is a parameter, not a constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import PIL.Image

from tfds_emotions import jpeg_rows

CROP_POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")
AUGMENTATIONS = ("hflip", "rotate", "brightness")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Shape of a model input clip.

    Attributes:
      num_segments: S, TSN segments per video (one snippet per segment).
      frames_per_segment: F, consecutive frames per snippet.
      crop_size: output height and width.
      audio_frames: feature frames after tiling; split evenly into the S segments.
      augment_prob: probability of applying one augmentation (train only).
      max_rotation: rotation range in degrees for the rotation augmentation.
      brightness_range: factor range for the brightness augmentation.
    """

    num_segments: int = 16
    frames_per_segment: int = 8
    crop_size: int = 112
    audio_frames: int = 4096
    augment_prob: float = 0.3
    max_rotation: float = 20.0
    brightness_range: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self):
        if self.audio_frames % self.num_segments:
            raise ValueError(
                f"audio_frames ({self.audio_frames}) must be divisible by num_segments ({self.num_segments})"
            )


def loop_pad(indices: np.ndarray, size: int) -> np.ndarray:
    """Repeats the index list from its start until it has at least `size` entries (authors' LoopPadding)."""
    if len(indices) >= size:
        return indices
    return np.resize(indices, size)


def tsn_indices(
    num_frames: int, spec: ClipSpec, rng: np.random.Generator | None, view: int = 0, views: int = 1
) -> np.ndarray:
    """[S, F] stored-frame indices: random snippet start per segment with `rng`, segment centres without.

    The index list is loop-padded to S*F, cut into S equal segments (floor length; the tail that does
    not fill a segment is dropped, as in the authors' code), and F consecutive indices are taken from
    each. Training draws the start uniformly from [0, max(0, L - F - 1)] (the authors' range, which never
    starts at the last possible offset); evaluation starts at L // 2 - F // 2, or, for temporal view
    `view` of `views` > 1, at the centre of the view's share of the possible starts [0, L - F].
    """
    s, f = spec.num_segments, spec.frames_per_segment
    padded = loop_pad(np.arange(num_frames), s * f)
    seg_len = len(padded) // s
    if rng is None and views > 1:
        begins = np.full(s, max(0, (seg_len - f) * (2 * view + 1) // (2 * views)))
    elif rng is None:
        begins = np.full(s, max(0, seg_len // 2 - f // 2))
    else:
        begins = rng.integers(0, max(0, seg_len - f - 1) + 1, size=s)
    out = np.empty((s, f), np.int64)
    for i, b in enumerate(begins):
        segment = padded[i * seg_len : (i + 1) * seg_len]
        out[i] = loop_pad(segment[b : b + f], f)[:f]
    return out


def square_crop_box(height: int, width: int, position: str) -> tuple[int, int, int]:
    """(top, left, side) of the square crop of side min(H, W) at one of CROP_POSITIONS."""
    side = min(height, width)
    top = {"center": (height - side) // 2, "top_left": 0, "top_right": 0}.get(position, height - side)
    left = {"center": (width - side) // 2, "top_left": 0, "bottom_left": 0}.get(position, width - side)
    return top, left, side


def view_crop_box(height: int, width: int, view: int, views: int) -> tuple[int, int, int]:
    """(top, left, side) of spatial view `view` of `views`: 1 is the centre crop; 3 are square crops at
    the start, centre and end of the long side, which together cover a portrait (or landscape) frame."""
    if views == 1:
        return square_crop_box(height, width, "center")
    side = min(height, width)
    along = (max(height, width) - side) * view // (views - 1)
    return (along, 0, side) if height > width else (0, along, side)


def make_eval_views(jpegs: Sequence[bytes], spec: ClipSpec, temporal_views: int = 1, spatial_views: int = 1):
    """uint8 [temporal_views * spatial_views, S, F, crop, crop, 3]: the evaluation clip of every view
    (temporal-major), each distinct frame decoded once. One view (1 x 1) is `make_video(..., rng=None)`."""
    idx = np.stack([tsn_indices(len(jpegs), spec, None, t, temporal_views) for t in range(temporal_views)])
    header = jpeg_rows.Header.parse(jpegs[0])
    boxes = [view_crop_box(header.height, header.width, v, spatial_views) for v in range(spatial_views)]
    first, stop = min(b[0] for b in boxes), max(b[0] + b[2] for b in boxes)
    decoded = decode_frames(jpegs, idx, (first, stop), header)
    shape = (spec.num_segments, spec.frames_per_segment, spec.crop_size, spec.crop_size, 3)
    crops = []  # Per spatial view: every decoded frame cropped and resized once.
    for top, left, side in boxes:
        top -= first
        crops.append(
            {i: _resize(img[top : top + side, left : left + side], spec.crop_size) for i, img in decoded.items()}
        )
    clips = [np.stack([crops[v][int(i)] for i in idx[t].reshape(-1)]).reshape(shape)
             for t in range(temporal_views) for v in range(spatial_views)]  # fmt: skip
    return np.ascontiguousarray(np.stack(clips))


def eval_video(jpegs: Sequence[bytes], spec: ClipSpec, views: tuple[int, int] = (1, 1)) -> np.ndarray:
    """A video's evaluation input: its one clip [S, F, crop, crop, 3] for 1 x 1 views (the paper's), else
    every (temporal, spatial) view stacked [V, S, F, crop, crop, 3]."""
    if tuple(views) == (1, 1):
        return make_video(jpegs, spec, None)[0]
    return make_eval_views(jpegs, spec, *views)


def decode_frames(
    jpegs: Sequence[bytes], wanted: np.ndarray, rows: tuple[int, int], header: jpeg_rows.Header
) -> dict[int, np.ndarray]:
    """Pixel rows [rows[0], rows[1]) of each distinct wanted frame, decoded once (short videos repeat
    indices after loop padding). `header` is the first frame's: a video's frames share one size and one
    header. Frames stored with a restart marker per MCU row (builder 2.0.0) decode only the rows that
    hold them; the pixels are the same either way."""
    return {int(i): jpeg_rows.decode_rows(jpegs[int(i)], *rows, header) for i in np.unique(wanted)}


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.asarray(PIL.Image.fromarray(frame).resize((size, size), PIL.Image.Resampling.BILINEAR))


def make_video(
    jpegs: Sequence[bytes], spec: ClipSpec, rng: np.random.Generator | None
) -> tuple[np.ndarray, dict[str, object]]:
    """uint8 [S, F, crop, crop, 3] clip, and a record of the random choices made (for tests and logs).

    Train (rng given): one crop position and at most one augmentation per video, shared by all frames.
    Eval (rng None): centre crop, no augmentation; equals "resize short side, centre crop".
    """
    idx = tsn_indices(len(jpegs), spec, rng)
    header = jpeg_rows.Header.parse(jpegs[0])
    position = CROP_POSITIONS[rng.integers(len(CROP_POSITIONS))] if rng is not None else "center"
    aug = None
    if rng is not None and rng.random() < spec.augment_prob:
        aug = AUGMENTATIONS[rng.integers(len(AUGMENTATIONS))]
    angle = float(rng.uniform(-spec.max_rotation, spec.max_rotation)) if aug == "rotate" else 0.0
    factor = float(rng.uniform(*spec.brightness_range)) if aug == "brightness" else 1.0
    top, left, side = square_crop_box(header.height, header.width, position)

    frames = {}
    for i, rows in decode_frames(jpegs, idx, (top, top + side), header).items():
        crop = _resize(rows[:, left : left + side], spec.crop_size)
        if aug == "rotate":
            crop = np.asarray(PIL.Image.fromarray(crop).rotate(angle))  # Nearest, as PIL and torchvision default.
        frames[i] = crop
    clip = np.stack([frames[int(i)] for i in idx.reshape(-1)])
    if aug == "hflip":
        clip = clip[:, :, ::-1]
    elif aug == "brightness":
        clip = np.clip(clip.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    shape = (spec.num_segments, spec.frames_per_segment, spec.crop_size, spec.crop_size, 3)
    return np.ascontiguousarray(clip.reshape(shape)), {
        "indices": idx,
        "position": position,
        "augmentation": aug,
        "angle": angle,
        "brightness": factor,
    }


def make_audio(features: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """float32 [S, audio_frames / S, D]: features loop-tiled or cut to audio_frames; zeros if empty."""
    t, d = features.shape
    if t == 0:
        tiled = np.zeros((spec.audio_frames, d), np.float32)
    else:
        tiled = features[np.arange(spec.audio_frames) % t]
    return tiled.reshape(spec.num_segments, spec.audio_frames // spec.num_segments, d).astype(np.float32)

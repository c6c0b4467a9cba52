"""A generated stand-in for eMotions: short mp4 clips (H.264 + AAC) whose labels need both modalities.

It is the embedded default for the demo and the tests, and it is written as ordinary video files in the
raw class-folder layout, so it goes through exactly the decode path that real videos go through.

How the label is carried: class c has a visual cue, the colour of a moving disc, that names its group
c // 2 (three hues), and an audio cue, the pitch of a tone, that names c % 2 (low or high). A visual-only
model can therefore tell at most which pair of classes a clip belongs to (accuracy <= 1/2), an audio-only
model which of the three classes with that parity (<= 1/3); only the two together identify the class.
In a fraction `cue_noise` of clips one cue is replaced by a random one, so the fused ceiling is below 1.
"""

from __future__ import annotations

import fractions
import os
import zlib

import av
import numpy as np

from tfds_emotions.classes import EMOTIONS_CLASSES

_HUES = ((230, 40, 40), (40, 200, 60), (50, 80, 235))  # One disc colour per class group c // 2.
_PITCHES = ((196.0, 247.0), (880.0, 1175.0))  # Tone range (Hz) for c % 2 == 0 and c % 2 == 1.


def _clip_rng(seed: int, class_index: int, clip_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, class_index, clip_index])


def write_clip(
    path: str,
    class_index: int,
    rng: np.random.Generator,
    *,
    width: int = 96,
    height: int = 160,
    fps: int = 15,
    sample_rate: int = 44100,
    cue_noise: float = 0.1,
) -> None:
    """Writes one synthetic clip (portrait, 1.6-2.4 s) for `class_index` to `path` (mp4)."""
    group, parity = class_index // 2, class_index % 2
    if rng.random() < cue_noise:
        group = int(rng.integers(3))
    if rng.random() < cue_noise:
        parity = int(rng.integers(2))
    num_frames = int(rng.integers(round(1.6 * fps), round(2.4 * fps) + 1))
    duration = num_frames / fps

    yy, xx = np.mgrid[0:height, 0:width]
    # A large disc that stays near the middle, so that every square crop the pipeline takes shows it.
    start = rng.uniform([0.35 * width, 0.35 * height], [0.65 * width, 0.65 * height])
    velocity = rng.uniform(-0.25, 0.25, size=2) * np.array([width, height]) / num_frames
    radius = rng.uniform(0.25, 0.35) * width
    base = rng.integers(60, 140, size=3)
    colour = np.clip(np.array(_HUES[group]) + rng.integers(-25, 26, size=3), 0, 255)

    pitch = rng.uniform(*_PITCHES[parity])
    t = np.arange(int(duration * sample_rate)) / sample_rate
    audio = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(t.size)
    audio = audio.astype(np.float32)

    with av.open(path, "w", format="mp4") as container:
        # B-frames made the encoded bytes differ between identical runs here; without them, and with a
        # fixed thread count, the same seed gives the same file.
        video = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "x264-params": "bframes=0"})
        video.thread_count = 1
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for i in range(num_frames):
            cx, cy = start + velocity * i
            img = np.empty((height, width, 3), np.uint8)
            img[:] = base
            img += rng.integers(0, 20, size=(height, width, 1), dtype=np.uint8)  # Sensor-like noise.
            img[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = colour
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        frame_size = 1024
        for i in range(0, audio.size, frame_size):
            chunk = audio[None, i : i + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = i
            frame.time_base = fractions.Fraction(1, sample_rate)
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)


def write_dataset(root: str, clips_per_class: int = 50, seed: int = 0, cue_noise: float = 0.1) -> str:
    """Writes `<root>/<Class>/synth_<k>.mp4` for every class; returns root. Idempotent per file."""
    for c, name in enumerate(EMOTIONS_CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(clips_per_class):
            path = os.path.join(root, name, f"synth_{k:04d}.mp4")
            if not os.path.exists(path):
                tmp = path + ".tmp"
                write_clip(tmp, c, _clip_rng(seed, c, k), cue_noise=cue_noise)
                os.replace(tmp, path)
    return root


def fingerprint(root: str) -> int:
    """CRC of every clip's bytes, to check that generation is reproducible."""
    crc = 0
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        for f in sorted(os.listdir(folder)):
            with open(os.path.join(folder, f), "rb") as fh:
                crc = zlib.crc32(fh.read(), crc)
    return crc

"""Small real media files for tests, written with PyAV: videos with and without audio, rotated, with a
variable frame rate, audio-only, and files damaged in the ways the builder must survive."""

from __future__ import annotations

import fractions
import os

import av
import numpy as np

from tfds_emotions import synthetic
from tfds_emotions.classes import EMOTIONS_CLASSES


def write_video(
    path: str,
    *,
    num_frames: int = 20,
    fps: int = 10,
    width: int = 64,
    height: int = 48,
    audio: bool = True,
    rotation: int = 0,
    frame_times: list[float] | None = None,
    seed: int = 0,
    codec: str = "libx264",
) -> str:
    """Writes an mp4/mov/mkv; `frame_times` (seconds) gives a variable frame rate; returns path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
        video = container.add_stream(
            codec, rate=fps, options={"x264-params": "bframes=0"} if codec == "libx264" else {}
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.thread_count = 1
        if frame_times is not None:
            video.codec_context.time_base = fractions.Fraction(1, 1000)
            video.time_base = fractions.Fraction(1, 1000)
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(num_frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[:, : width // 4] = 255  # A white band on the left marks orientation.
            img[..., 1] = rng.integers(0, 255)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(frame_times[i] * 1000))
                frame.time_base = fractions.Fraction(1, 1000)
            else:
                frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            _encode_tone(container, sound, num_frames / fps, 16000)
    return path


def _encode_tone(container, stream, seconds: float, rate: int) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for i in range(0, samples.size, 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, i : i + 1024], format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i, fractions.Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio(path: str, seconds: float = 2.0, codec: str = "aac", fmt: str | None = None) -> str:
    """An audio-only file (used as a 'video' with no video stream, and as the authors' mp3s)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=16000 if codec == "aac" else 22050, layout="mono")
        _encode_tone(container, stream, seconds, stream.rate)
    return path


def corrupt_audio_packets(path: str) -> int:
    """Overwrites the payload of most audio packets with noise; returns how many were damaged."""
    with av.open(path) as container:
        spans = [(p.pos, p.size) for p in container.demux(audio=0) if p.size and p.pos is not None]
    rng = np.random.default_rng(0)
    with open(path, "r+b") as fh:
        for pos, size in spans[1:-1]:
            fh.seek(pos)
            fh.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return len(spans) - 2


def truncate(path: str, fraction: float = 0.5) -> str:
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: int(len(data) * fraction)])
    return path


def good_clips(root: str, per_class: int = 2, seed: int = 0, prefix: str = "v") -> list[str]:
    """Synthetic clips (the same generator the `synthetic` config uses) in `<root>/<Class>/`."""
    paths = []
    for c, name in enumerate(EMOTIONS_CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            p = os.path.join(root, name, f"{prefix}{k}.mp4")
            synthetic.write_clip(p, c, np.random.default_rng([seed, c, k]))
            paths.append(p)
    return paths

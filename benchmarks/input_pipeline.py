r"""Input pipeline throughput: our Grain pipeline over ArrayRecord vs a loader in the authors' style.

  python benchmarks/input_pipeline.py [--videos 12 --seconds 20 --clips 60]

Both loaders produce the paper's training clip (16 x 8 frames at 112 x 112, random TSN offsets, crop and
augmentation, plus MFCC [16, 256, 32]) from the same videos (see media_corpus.py):
  * reference: per-frame JPEG folders at short side 240 and mp3 files (the authors' extraction), read with
    PIL per frame, cropped and resized per frame, and librosa load + MFCC of the mp3 per sample;
  * ours: the built dataset's ArrayRecord files through `ClipRecords` and the pipeline's TrainTransform.
Per-core figures run each loader sequentially in one thread. The full Grain pipeline is timed on one
core and on all of them (CPU affinity), with worker processes and with threads. The last line is a JSON
object.
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
from avcanet_jax import runtime  # noqa: E402
from avcanet_jax.clip_sampling import ClipSpec, make_audio  # noqa: E402
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


def breakdown(source: ip.ClipRecords, spec: ClipSpec, n: int) -> dict[str, float]:
    """Per clip, ms: reading a record's bytes (ArrayRecord) and parsing them (`ClipRecords`), decoding
    the 128 frames' crop rows (builder 2.0.0's restart markers; the whole frames for comparison), then
    slicing the crops out, and the audio."""
    from array_record.python.array_record_module import ArrayRecordReader

    from avcanet_jax.clip_sampling import _resize, decode_frames, square_crop_box, tsn_indices
    from tfds_emotions.jpeg_rows import Header

    paths = source.dataset_info.splits["train"].filepaths
    reader = ArrayRecordReader(str(paths[0]), "readahead_buffer_size:0")
    count = reader.num_records()
    raw_ms = 1e3 / timed(lambda i: reader.read([i % count]), n)
    reader.close()
    read_ms = 1e3 / timed(lambda i: source[i % len(source)], n)
    example = source[0]
    idx = tsn_indices(len(example["frames"]), spec, np.random.default_rng(0))
    header = Header.parse(example["frames"][0])
    top, left, side = square_crop_box(header.height, header.width, "center")
    rows_ms = 1e3 / timed(lambda i: decode_frames(example["frames"], idx, (top, top + side), header), n)
    whole_ms = 1e3 / timed(lambda i: decode_frames(example["frames"], idx, (0, header.height), header), n)
    decoded = decode_frames(example["frames"], idx, (top, top + side), header)
    crop_ms = 1e3 / timed(lambda i: [_resize(f[:, left : left + side], spec.crop_size) for f in decoded.values()], n)
    audio_ms = 1e3 / timed(lambda i: make_audio(example["audio"], spec), n)
    return {
        "raw_record_read_ms": raw_ms,
        "record_parse_ms": read_ms - raw_ms,
        "jpeg_decode_crop_rows_ms": rows_ms,
        "jpeg_decode_whole_frames_ms": whole_ms,
        "crop_ms": crop_ms,
        "audio_ms": audio_ms,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clips", type=int, default=60, help="clips timed per loader")
    parser.add_argument("--width", type=int, default=540)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "avcanet_bench"))
    args = parser.parse_args()
    runtime.leave_out_absent_tpus()  # The pipeline asks JAX for the process index; no libtpu warnings.

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
    source = ip.data_source(cfg, "train")
    frames_per_video = np.mean([len(source[i]["frames"]) for i in range(len(source))])
    transform = ip.TrainTransform(spec)
    ours_rate = timed(lambda i: transform.random_map(source[i % len(source)], np.random.default_rng(i)), args.clips)
    parts = breakdown(source, spec, args.clips)  # Where our time goes, per clip.

    # The whole Grain pipeline, batches of 2, on one core and then on all (worker processes inherit the
    # CPU affinity): one worker process per core, or one read thread per core in the main process.
    def pipeline_rate(n: int, processes: bool) -> float:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0) | all_cpus)[:n])
        kw = (
            dict(num_workers=n, read_threads=1, read_buffer=4) if processes else dict(read_threads=n, read_buffer=4 * n)
        )
        it = iter(ip.train_dataset(ip.PipelineConfig(**{**cfg.__dict__, **kw})))
        next(it)
        start = time.perf_counter()
        n_batches = max(2, args.clips // 2)
        for _ in range(n_batches):
            next(it)
        rate = n_batches * 2 / (time.perf_counter() - start)
        os.sched_setaffinity(0, all_cpus)
        return rate

    all_cpus = os.sched_getaffinity(0)
    rates = {(n, p): pipeline_rate(n, p) for p in (True, False) for n in (1, cores)}
    grain_rate = max(rates[(cores, True)], rates[(cores, False)])

    print(media_corpus.describe(paths, args.seconds, args.width, args.height, content))
    print(f"stored frames per video: {frames_per_video:.0f}")
    print(f"reference loader (JPEG folders + librosa on mp3): {ref_rate:.2f} clips/s on one core")
    print(f"ours (ArrayRecord + TrainTransform):               {ours_rate:.2f} clips/s on one core")
    print("  per clip: " + ", ".join(f"{k[:-3].replace('_', ' ')} {v:.2f} ms" for k, v in parts.items()))
    for processes, what in ((True, "worker processes"), (False, "read threads in one process")):
        one, many = rates[(1, processes)], rates[(cores, processes)]
        print(f"Grain pipeline, {what}: {one:.2f} clips/s on 1 core, {many:.2f} on {cores} ({many / one:.2f}x)")
    print(
        json.dumps(
            {
                "clips_per_s_per_core": round(ours_rate, 2),
                "reference_clips_per_s_per_core": round(ref_rate, 2),
                "speedup_vs_reference_loader": round(ours_rate / ref_rate, 2),
                "grain_pipeline_clips_per_s": round(grain_rate, 2),
                "grain_pipeline_clips_per_s_per_core": round(grain_rate / cores, 2),
                "grain_scaling": {
                    "processes": round(rates[(cores, True)] / rates[(1, True)], 2),
                    "threads": round(rates[(cores, False)] / rates[(1, False)], 2),
                },
                "cores": cores,
                "content": content,
                "per_clip_ms": parts,
            }
        )
    )


if __name__ == "__main__":
    main()

r"""Classify videos with a trained workdir: one JSON line per video on stdout.

  python -m avcanet_jax.predict --workdir=W clip1.mp4 clip2.mov ...
  python -m avcanet_jax.predict --workdir=W videos/ 'more/**/*.mp4' --output=predictions.jsonl

Each video goes through the dataset's own decoding (`tfds_emotions.media`: frames scaled and JPEG-coded
exactly as stored, MFCCs as stored) and the evaluation preprocessing (segment centres, centre crop,
audio tiled), so a prediction sees what the test metrics saw. Uses the best-on-validation state when
the workdir has one, else the latest. A file that cannot be decoded gets a JSON line with an `error`
and the others still run; the exit status is 1 when any file failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx

from avcanet_jax import cli, config_checks, datasets, runtime, train_step
from avcanet_jax import workdir as wdir
from avcanet_jax.avcanet import AVCANet
from avcanet_jax.checkpointing import Checkpoints, require_checkpoints
from avcanet_jax.clip_sampling import ClipSpec, eval_video, make_audio
from tfds_emotions.classes import POLARITIES
from tfds_emotions.media import VIDEO_EXTENSIONS


@dataclasses.dataclass
class Predictor:
    model: AVCANet
    spec: ClipSpec
    media_options: object
    class_names: tuple[str, ...]
    class_polarity: tuple[str, ...]
    step: int
    views: tuple[int, int] = (1, 1)  # (temporal, spatial) views, probabilities averaged (config.eval).

    def __post_init__(self):
        graphdef, state = nnx.split(self.model)

        @jax.jit
        def forward(state, video, audio):
            return {k: jax.nn.softmax(v, -1) for k, v in nnx.merge(graphdef, state)(video, audio).items()}

        self._state, self._forward = state, forward

    def clip(self, path: str) -> dict[str, np.ndarray]:
        """The evaluation inputs of one video file; raises tfds_emotions.media.MediaError."""
        from tfds_emotions import media

        fields = media.decode_video(path, self.media_options)
        video = eval_video(fields["frames"], self.spec, self.views)
        return {"video": video, "audio": make_audio(fields["audio"], self.spec), "has_audio": fields["has_audio"]}

    def probabilities(self, clips: list[dict], batch_size: int) -> dict[str, np.ndarray]:
        """Softmax of every head for `clips`, in fixed-size batches (one compilation)."""
        rows = {}
        for i in range(0, len(clips), batch_size):
            chunk = clips[i : i + batch_size]
            chunk = chunk + [chunk[0]] * (batch_size - len(chunk))
            video = np.stack([c["video"] for c in chunk])
            audio = np.stack([c["audio"] for c in chunk])
            views = [video] if self.views == (1, 1) else [video[:, v] for v in range(video.shape[1])]
            outs = [jax.device_get(self._forward(self._state, clip, audio)) for clip in views]
            for k in outs[0]:  # Softmax probabilities, averaged over the views.
                rows.setdefault(k, []).append(np.mean([o[k] for o in outs], axis=0))
        return {k: np.concatenate(v)[: len(clips)] for k, v in rows.items()}

    def describe(self, path: str, probs: dict[str, np.ndarray], i: int, has_audio: bool) -> dict:
        p = probs["logits"][i]
        best = int(p.argmax())
        by_polarity = dict.fromkeys(POLARITIES, 0.0)  # The dataset's order: positive, neutral, negative.
        for name, prob in zip(self.class_polarity, p, strict=True):
            by_polarity[name] += float(prob)
        out = {
            "path": path,
            "emotion": self.class_names[best],
            "polarity": self.class_polarity[best],
            "probabilities": {c: round(float(q), 6) for c, q in zip(self.class_names, p, strict=True)},
            "polarity_probabilities": {k: round(v, 6) for k, v in by_polarity.items()},
            "has_audio": bool(has_audio),
            "checkpoint_step": self.step,
        }
        for head, key in (("logits_audio", "audio_only"), ("logits_visual", "visual_only")):
            if head in probs:
                out[key] = self.class_names[int(probs[head][i].argmax())]
        return out


def load(workdir: str, checkpoint: str = "best", views: tuple[int, int] | None = None) -> Predictor:
    """The model of a training workdir, restored on one device; `views` (temporal, spatial) default to
    the workdir's config (`eval`)."""
    if not os.path.isdir(workdir):
        raise cli.UserError(f"--workdir={workdir}: no such directory")
    c = wdir.saved_config(workdir)
    if c is None:
        raise cli.UserError(f"--workdir={workdir} is not a training workdir (no config.json)")
    require_checkpoints(workdir)
    model_cfg = config_checks.model_config(c)
    card = datasets.card(c.data.dataset)
    tx = train_step.make_optimizer(c, 1)  # Only its state's structure matters here.

    graphdef, abstract = nnx.split(nnx.eval_shape(train_step.model_and_optimizer(model_cfg, tx, c.seed)))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    ckpt = Checkpoints(workdir)
    try:
        step, state = wdir.restore_for_evaluation(workdir, c, ckpt, target, prefer_best=checkpoint == "best")
    finally:
        ckpt.close()
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    views = tuple(views) if views is not None else config_checks.eval_views(c)
    return Predictor(
        model, config_checks.clip_spec(c), card.media_options, card.class_names, card.polarity_names, int(step),
        views,
    )  # fmt: skip


def predict(predictor: Predictor, paths: Iterable[str], batch_size: int = 4) -> Iterator[dict]:
    """One result per path, in order: a prediction, or {"path", "error"} for a file that cannot be read.

    Videos are decoded `batch_size` at a time, so memory stays bounded however many paths are given.
    """
    from tfds_emotions.media import MediaError

    paths = list(paths)
    for start in range(0, len(paths), batch_size):
        clips, errors = {}, {}
        for path in paths[start : start + batch_size]:
            try:
                clips[path] = predictor.clip(path)
            except (MediaError, OSError) as e:
                errors[path] = f"{type(e).__name__}: {e}"
                logging.warning("%s: %s", path, errors[path])
        ok = list(clips)
        probs = predictor.probabilities([clips[p] for p in ok], batch_size) if ok else {}
        for path in paths[start : start + batch_size]:
            if path in errors:
                yield {"path": path, "error": errors[path]}
            else:
                yield predictor.describe(path, probs, ok.index(path), clips[path]["has_audio"])


def expand_paths(args: Iterable[str]) -> list[str]:
    """The videos the arguments name: a directory stands for every file with a video extension under it
    (recursively, sorted), a glob pattern (`*`, `?`, `[`, `**`) for its matches; a plain path is kept as
    given, so that one which cannot be read gets its error line."""
    import glob

    from tfds_emotions.media import VIDEO_EXTENSIONS

    def videos(files):
        return sorted(f for f in files if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS)

    out = []
    for arg in args:
        if os.path.isdir(arg):
            out += videos(os.path.join(d, f) for d, _, files in os.walk(arg) for f in files)
        elif glob.has_magic(arg):
            out += videos(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
        else:
            out.append(arg)
    return out


class Progress:
    """'predicted 120/5000 videos, 8.3 videos/s, ETA 590 s' on the log, at most every `every_s`."""

    def __init__(self, total: int, every_s: float = 10.0):
        self.total, self.every_s, self.done = total, every_s, 0
        self.t0 = self.last = time.time()

    def step(self) -> None:
        self.done += 1
        now = time.time()
        if now - self.last >= self.every_s or self.done == self.total:
            rate = self.done / max(now - self.t0, 1e-9)
            logging.info("predicted %d/%d videos, %.1f videos/s, ETA %.0f s", self.done, self.total, rate,
                         (self.total - self.done) / rate)  # fmt: skip
            self.last = now


def _define_flags() -> None:
    """Flags exist only when this module is the program, so that importing it never clashes."""
    flags.DEFINE_string("workdir", None, "A training workdir (config.json and checkpoints).")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which state (best falls back to latest).")
    flags.DEFINE_integer("batch_size", 4, "Videos per forward pass (one compiled step for all).")
    flags.DEFINE_string("output", None, "Also write the JSON lines to this file.")
    flags.DEFINE_integer("temporal_views", None, "Evaluation views in time (default: the workdir's config.eval).")
    flags.DEFINE_enum("spatial_views", None, ["1", "3"], "1: centre crop; 3: start, centre, end of the long side.")


def main(argv):
    f = flags.FLAGS
    if not argv[1:]:
        raise app.UsageError("give video files, directories or glob patterns")
    paths = expand_paths(argv[1:])
    if not paths:
        raise cli.UserError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {' '.join(argv[1:])}")
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    runtime.start("off")
    views = None
    if f.temporal_views is not None or f.spatial_views is not None:
        if f.temporal_views is not None and f.temporal_views < 1:
            raise cli.UserError(f"--temporal_views must be positive, got {f.temporal_views}")
        views = (f.temporal_views or 1, int(f.spatial_views or 1))
    predictor = load(f.workdir, f.checkpoint, views)
    failed, progress = 0, Progress(len(paths))
    with open(f.output, "w", encoding="utf-8") if f.output else contextlib.nullcontext() as out:
        for result in predict(predictor, paths, f.batch_size):
            failed += "error" in result
            line = json.dumps(result)
            print(line, flush=True)
            if out is not None:
                out.write(line + "\n")
            progress.step()
    if failed:
        logging.warning("%d of %d videos could not be read", failed, len(paths))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

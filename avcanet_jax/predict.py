r"""Classify videos with a trained workdir: one JSON line per video on stdout.

  python -m avcanet_jax.predict --workdir=W clip1.mp4 clip2.mov ...

Each video goes through the dataset's own decoding (`tfds_emotions.media`: frames scaled and JPEG-coded
exactly as stored, MFCCs as stored) and the evaluation preprocessing (segment centres, centre crop,
audio tiled), so a prediction sees what the test metrics saw. Uses the best-on-validation state when
the workdir has one, else the latest. A file that cannot be decoded gets a JSON line with an `error`
and the others still run; the exit status is 1 when any file failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx

from avcanet_jax import cli, config_checks, datasets, runtime, train_step
from avcanet_jax import workdir as wdir
from avcanet_jax.avcanet import AVCANet
from avcanet_jax.checkpointing import Checkpoints, require_checkpoints
from avcanet_jax.clip_sampling import ClipSpec, make_audio, make_video
from tfds_emotions.classes import POLARITIES


@dataclasses.dataclass
class Predictor:
    model: AVCANet
    spec: ClipSpec
    media_options: object
    class_names: tuple[str, ...]
    class_polarity: tuple[str, ...]
    step: int

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
        video, _ = make_video(fields["frames"], self.spec, None)
        return {"video": video, "audio": make_audio(fields["audio"], self.spec), "has_audio": fields["has_audio"]}

    def probabilities(self, clips: list[dict], batch_size: int) -> dict[str, np.ndarray]:
        """Softmax of every head for `clips`, in fixed-size batches (one compilation)."""
        rows = {}
        for i in range(0, len(clips), batch_size):
            chunk = clips[i : i + batch_size]
            chunk = chunk + [chunk[0]] * (batch_size - len(chunk))
            video = np.stack([c["video"] for c in chunk])
            audio = np.stack([c["audio"] for c in chunk])
            for k, v in jax.device_get(self._forward(self._state, video, audio)).items():
                rows.setdefault(k, []).append(v)
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


def load(workdir: str, checkpoint: str = "best") -> Predictor:
    """The model of a training workdir, restored on one device."""
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
    return Predictor(
        model, config_checks.clip_spec(c), card.media_options, card.class_names, card.polarity_names, int(step)
    )


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


def _define_flags() -> None:
    """Flags exist only when this module is the program, so that importing it never clashes."""
    flags.DEFINE_string("workdir", None, "A training workdir (config.json and checkpoints).")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which state (best falls back to latest).")
    flags.DEFINE_integer("batch_size", 4, "Videos per forward pass.")


def main(argv):
    f = flags.FLAGS
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more video files")
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    runtime.start("off")
    predictor = load(f.workdir, f.checkpoint)
    failed = 0
    for result in predict(predictor, paths, f.batch_size):
        failed += "error" in result
        print(json.dumps(result), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)

"""The paper's recipe on VideoEmotion-8 (8 classes, VAANet's polarity map for EP-CE), one official split.

  python -m tfds_emotions.build --dataset=video_emotion8 --config=split01 --manual_dir=VE8 --data_dir=DATA
  python -m avcanet_jax.main --config=configs/ve8.py --workdir=W --config.data.data_dir=DATA
  python -m avcanet_jax.protocol --config=configs/ve8.py --workdir=W --config.data.data_dir=DATA  # all 10

EP-CE's polarity map comes from the builder (`VideoEmotion8.POLARITY`): Anticipation, Joy, Surprise and
Trust positive; Anger, Disgust, Fear and Sadness negative; no neutral class.
"""

from __future__ import annotations

from configs import base


def get_config():
    c = base.get_config()
    c.data.dataset = "video_emotion8/split01"
    c.model.num_classes = 8
    # The evaluation protocol: the ten official splits, reported as mean and standard deviation.
    c.protocol_datasets = tuple(f"video_emotion8/split{n:02d}" for n in range(1, 11))
    return c

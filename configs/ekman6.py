"""The paper's recipe on Ekman-6 (6 classes; joy and surprise positive, the rest negative for EP-CE).

  python -m tfds_emotions.build --dataset=ekman6 --config=standard --manual_dir=EKMAN6 --data_dir=DATA
  python -m avcanet_jax.protocol --config=configs/ekman6.py --workdir=W --config.data.data_dir=DATA

Ekman-6 has one standard split, so the protocol repeats training over `protocol_seeds` and reports the
mean and standard deviation over those runs.
"""

from __future__ import annotations

from configs import base


def get_config():
    c = base.get_config()
    c.data.dataset = "ekman6/standard"
    c.model.num_classes = 6
    c.protocol_datasets = ("ekman6/standard",)
    c.protocol_seeds = (1, 2, 3)
    return c

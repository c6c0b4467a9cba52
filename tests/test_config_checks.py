"""Broken configs fail before compilation with the field's name; the shipped configs pass."""

from __future__ import annotations

import pytest

from avcanet_jax import config_checks
from configs import base, demo


@pytest.mark.parametrize("module", [base, demo])
def test_shipped_configs_validate(module):
    c = module.get_config()
    assert config_checks.validate(c, num_devices=8, num_processes=1)["data"] == 8
    model = config_checks.model_config(c)
    assert model.num_classes == 6
    assert config_checks.pipeline_config(c).clip.num_segments == c.data.num_segments


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: setattr(c, "batch_size", 10), "config.batch_size"),
        (lambda c: c.mesh.update(axes={"data": 3, "fsdp": -1}), "config.mesh.axes"),
        (lambda c: c.data.update(dataset="kinetics/400"), "config.data.dataset"),
        (lambda c: c.data.update(audio_frames=101), "config.data.audio_frames"),
        (lambda c: c.model.update(fusion="attention"), "config.model.fusion"),
        (lambda c: c.model.update(swin="huge"), "config.model.swin"),
        (lambda c: c.model.update(swin={"embed_dims": 8}), "config.model.swin"),
        (lambda c: setattr(c, "loss", "focal"), "config.loss"),
        (lambda c: setattr(c, "grad_accumulation", 0), "config.grad_accumulation"),
        (lambda c: c.optimizer.update(lr=0.0), "config.optimizer.lr"),
    ],
)
def test_broken_config_names_the_field(change, field):
    c = demo.get_config()
    change(c)
    with pytest.raises(config_checks.ConfigError) as err:
        config_checks.validate(c, num_devices=8, num_processes=1)
    assert str(err.value).startswith(field), str(err.value)

"""Broken configs fail before compilation with the field's name; the shipped configs pass."""

from __future__ import annotations

import pytest
from flax import nnx

from avcanet_jax import config_checks
from avcanet_jax.avcanet import AVCANet
from configs import ablations, base, demo


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
        (lambda c: c.optimizer.update(mu_dtype="float16"), "config.optimizer.mu_dtype"),
        (lambda c: c.model.update(attention="cudnn"), "config.model.attention"),
        (lambda c: c.model.update(remat="selective"), "config.model.remat"),
    ],
)
def test_broken_config_names_the_field(change, field):
    c = demo.get_config()
    change(c)
    with pytest.raises(config_checks.ConfigError) as err:
        config_checks.validate(c, num_devices=8, num_processes=1)
    assert str(err.value).startswith(field), str(err.value)


def test_auto_attention_is_the_kernel_on_tpus_cudnn_on_gpus_in_bfloat16_and_the_reference_elsewhere(monkeypatch):
    assert not config_checks.gpu_has_fused_attention()  # No GPU here.
    monkeypatch.setattr(config_checks, "gpu_has_fused_attention", lambda: True)  # As on an A100 or H100.
    c = base.get_config()
    assert c.model.attention == "auto"
    assert config_checks.model_config(c, platform="tpu").swin_config.attention == "pallas"
    assert config_checks.model_config(c, platform="gpu").swin_config.attention == "xla"  # float32
    assert config_checks.model_config(c).swin_config.attention == "xla"  # These tests run on CPU.
    c.model.bfloat16 = True
    assert config_checks.model_config(c, platform="gpu").swin_config.attention == "cudnn"
    assert config_checks.model_config(c, platform="cpu").swin_config.attention == "xla"
    monkeypatch.setattr(config_checks, "gpu_has_fused_attention", lambda: False)  # A T4, or ROCm.
    assert config_checks.model_config(c, platform="gpu").swin_config.attention == "xla"
    with c.unlocked():
        del c.model["attention"]
        c.model.fused_attention = True  # A config.json written before `model.attention` existed.
    assert config_checks.model_config(c).swin_config.attention == "dot_product"


def test_approximate_gelu_reaches_the_swin_config_and_older_configs_keep_the_exact_one():
    c = base.get_config()
    assert config_checks.model_config(c).swin_config.approximate_gelu is False
    c.model.approximate_gelu = True
    assert config_checks.model_config(c).swin_config.approximate_gelu is True
    with c.unlocked():
        del c.model["approximate_gelu"]  # A config.json written before the field existed.
    assert config_checks.model_config(c).swin_config.approximate_gelu is False


@pytest.mark.parametrize(
    "platform, bfloat16, message",
    [("cpu", True, "NVIDIA GPUs only"), ("tpu", True, "NVIDIA GPUs only"), ("gpu", False, "bfloat16=True")],
)
def test_cudnn_attention_where_it_cannot_run_is_refused_before_compiling(platform, bfloat16, message):
    c = base.get_config()
    c.model.attention, c.model.bfloat16 = "cudnn", bfloat16
    with pytest.raises(config_checks.ConfigError, match=message) as err:
        config_checks.model_config(c, platform=platform)
    assert str(err.value).startswith("config.model.attention")


@pytest.mark.parametrize("name", sorted(ablations.ABLATIONS))
def test_every_ablation_config_validates_and_changes_one_thing(name):
    paper, small = ablations.get_config(name), ablations.get_config(f"demo/{name}")
    for c, recipe in ((paper, base.get_config()), (small, demo.get_config())):
        config_checks.validate(c, num_devices=8, num_processes=1)
        changed = {k for k, v in _flat(c).items() if _flat(recipe).get(k) != v}
        assert changed == set(ablations.ABLATIONS[name]) | {"ablation"}
    cfg = config_checks.model_config(small)
    abstract = nnx.eval_shape(lambda: AVCANet(cfg, nnx.Rngs(0)))  # Builds without allocating.
    assert abstract.cfg == cfg


def test_unknown_ablation_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="no_local"):
        ablations.get_config("demo/no_such_thing")


def _flat(c, prefix=""):
    out = {}
    for k, v in c.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_resnet_pairs_are_on_for_tpus_by_default_and_can_be_set():
    c = base.get_config()
    assert c.model.resnet_pairs == "auto"
    assert config_checks.model_config(c, platform="tpu").resnet_pairs is True
    assert config_checks.model_config(c, platform="gpu").resnet_pairs is False
    assert config_checks.model_config(c).resnet_pairs is False  # These tests run on CPU.
    c.model.resnet_width = 128  # Already fills the lanes.
    assert config_checks.model_config(c, platform="tpu").resnet_pairs is False
    c.model.resnet_pairs = True
    assert config_checks.model_config(c, platform="cpu").resnet_pairs is True
    c.model.resnet_pairs = "yes"
    with pytest.raises(config_checks.ConfigError, match=r"^config.model.resnet_pairs: 'yes'"):
        config_checks.model_config(c, platform="tpu")
    with c.unlocked():
        del c.model["resnet_pairs"]  # A config.json written before the field existed.
    assert config_checks.model_config(c, platform="tpu").resnet_pairs is False  # Width 128 still.

"""The model starts as the authors' PyTorch model starts: every module's initial distribution against
PyTorch's own initialisation of the same module (statistics in `tests/fixtures/init_stats.json`, made by
`tools/make_init_fixtures.py` with torch), the `clones()` start, and PyTorch's BatchNorm update."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avcanet_jax import config_checks
from avcanet_jax.avcanet import AVCANet, ModelConfig
from avcanet_jax.fusion import FusionConfig
from avcanet_jax.layers import BF16
from avcanet_jax.resnet import batch_norm
from avcanet_jax.swin3d import SwinConfig
from configs import base

FIXTURE = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "init_stats.json")))


@pytest.fixture(scope="module")
def model():
    """The paper's widths (Swin-T's 96 to 768 channels, ResNet width 64, D = 512), freshly initialised,
    with fewer blocks than the paper's so that it builds in seconds."""
    cfg = ModelConfig(swin=SwinConfig(depths=(1, 1, 1, 1)), resnet_depth=18, lgf=FusionConfig(levels=2))
    return AVCANet(cfg, nnx.Rngs(params=0, dropout=1))


# fixture entry -> (our module's parameters, distribution of the weight)
MODULES = {
    "linear_512_512": (lambda m: [m.local.levels[0].v_self.attn.q], "uniform"),
    "linear_1024_512": (lambda m: [m.local.levels[0].v_gate_self], "uniform"),
    "linear_512_1": (lambda m: [m.local.v_score], "uniform"),
    "linear_768_512": (lambda m: [m.visual.proj], "uniform"),
    "linear_1024_6": (lambda m: [m.classifier.out], "uniform"),
    "conv1d_512_512_k3": (lambda m: [m.local.levels[1].v_tcn.conv1], "uniform"),
    "conv1d_512_512_k1": (lambda m: [m.local.levels[1].v_tcn.conv2], "uniform"),
    "conv3d_patch_embed": (lambda m: [m.visual.backbone.patch_embed.proj], "uniform"),
    "swin_linear_96_288": (lambda m: [m.visual.backbone.stages[0][0].attn.qkv], "normal"),
    "resnet_stem_7x1": (lambda m: [m.audio.backbone.conv1], "normal"),
    "resnet_conv_3x3_64": (lambda m: [m.audio.backbone.layers[0][0].conv1], "normal"),
    "resnet_conv_3x3_256_512": (lambda m: [m.audio.backbone.layers[3][0].conv1], "normal"),
    "mha_in_proj": (lambda m: [m.glob.attn.q, m.glob.attn.k, m.glob.attn.v], "uniform"),
    "mha_out_proj": (lambda m: [m.glob.attn.out], "uniform"),
}


def _values(modules, name):
    return np.concatenate([np.asarray(getattr(mod, name)[...]).ravel() for mod in modules])


def _check(ours: np.ndarray, theirs: dict, kind: str):
    if theirs["std"] == 0.0:  # PyTorch starts it at zero.
        np.testing.assert_array_equal(ours, 0.0)
        return
    if ours.size >= 500:  # Enough values for the spread to mean something (10% covers sampling noise).
        assert ours.std() == pytest.approx(theirs["std"], rel=0.1)
    if kind == "uniform":  # Same support: ours never beyond PyTorch's bound, and reaching close to it.
        assert np.abs(ours).max() <= theirs["max_abs"] * 1.02
        if ours.size >= 500:
            assert np.abs(ours).max() >= theirs["max_abs"] * 0.95


@pytest.mark.parametrize("entry", sorted(MODULES))
def test_initial_distributions_match_pytorchs(model, entry):
    modules, kind = MODULES[entry]
    theirs = FIXTURE["modules"][entry]
    mods = modules(model)
    kernel = _values(mods, "kernel")
    assert kernel.size == np.prod(theirs["weight_shape"]) * len(mods) or entry == "mha_in_proj"
    _check(kernel, theirs["weight"], kind)
    if "bias" in theirs:
        _check(_values(mods, "bias"), theirs["bias"], "uniform")
    else:
        assert getattr(mods[0], "bias", None) is None


def test_audio_stem_starts_at_pytorchs_scale_not_flaxs_fan_in(model):
    """The (7, 1) stem is never loaded from ImageNet: its start is what the authors' audio branch had."""
    std = float(np.std(model.audio.backbone.conv1.kernel[...]))
    assert std == pytest.approx((2 / (64 * 7)) ** 0.5, rel=0.1)  # kaiming fan_out: 0.067 (fan_in gave 0.53).


@pytest.mark.parametrize("clone", [True, False])
def test_pyramid_starts_from_clones_only_when_asked(clone):
    cfg = FusionConfig(dim=16, levels=2, heads=2, ffn_dim=8, faithful_clone_init=clone)
    from avcanet_jax.fusion import LocalFusion

    local = LocalFusion(cfg, nnx.Rngs(0))
    level0, level1 = local.levels
    attn, other = level0.v_self.attn, level1.cross.attn
    same = lambda a, b: bool(np.array_equal(a.kernel[...], b.kernel[...]) and np.array_equal(a.bias[...], b.bias[...]))  # noqa: E731
    assert all(same(attn.q, p) for p in (attn.k, attn.v, attn.out)) is clone
    assert same(level0.v_self.ffn.w1, level1.cross.ffn.w1) is clone
    assert same(level0.a_self.ffn.w2, level1.v_self.ffn.w2) is clone
    assert not same(attn.q, other.q)  # Each attention layer is built fresh either way.


def test_batch_norm_update_equals_pytorchs():
    """One training step from (0, 1): PyTorch's running variance takes the unbiased batch variance."""
    ref = FIXTURE["batch_norm"]
    x = np.asarray(ref["input_nchw"], np.float32).transpose(0, 2, 3, 1)  # NHWC
    bn = batch_norm(x.shape[-1], nnx.Rngs(0), ModelConfig().precision)
    y = bn(jnp.asarray(x))
    np.testing.assert_allclose(bn.mean[...], ref["running_mean"], atol=1e-6)
    np.testing.assert_allclose(bn.var[...], ref["running_var"], atol=1e-6)
    np.testing.assert_allclose(y, np.asarray(ref["output_nchw"]).transpose(0, 2, 3, 1), atol=1e-5)
    biased = x.reshape(-1, x.shape[-1]).var(axis=0)  # Flax's update would have used this.
    assert np.abs(np.asarray(bn.var[...]) - (0.9 + 0.1 * biased)).max() > 1e-3
    bn.eval()  # Evaluation uses the running statistics and leaves them alone.
    before = np.asarray(bn.var[...])
    bn(jnp.asarray(x))
    np.testing.assert_array_equal(bn.var[...], before)


def test_batch_norm_in_bfloat16_keeps_float32_scale_and_bias():
    """As in PyTorch's mixed precision, the weights stay float32 (nnx.BatchNorm rounds them to its compute
    dtype): the output uses them unrounded, in training and evaluation, and their gradients are float32
    sums rather than bfloat16 ones."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 5, 8)) * 3 + 1, jnp.bfloat16)
    dy = jnp.asarray(rng.standard_normal((64, 5, 8)), jnp.bfloat16)
    weights = {"scale": 1.75 + rng.uniform(0.001, 0.005, 8), "bias": rng.uniform(-1, 1, 8)}  # Not bf16 values.

    def run(bn):
        for name, value in weights.items():
            getattr(bn, name)[...] = jnp.asarray(value, jnp.float32)
        grads = nnx.grad(lambda bn: (bn(x).astype(jnp.float32) * dy).sum())(bn)
        bn.eval()
        return {"train": grads, "eval": bn(x)}

    ours = run(batch_norm(8, nnx.Rngs(0), BF16))
    f32 = run(batch_norm(8, nnx.Rngs(0), ModelConfig().precision))
    for name in weights:
        g, ref = ours["train"][name][...], f32["train"][name][...]
        assert g.dtype == jnp.float32 and (g != g.astype(jnp.bfloat16).astype(jnp.float32)).any()
        np.testing.assert_allclose(g, ref, rtol=2e-2, atol=0.1)
    # Evaluation: the running statistics with the float32 weights, rounded once at the end.
    expected = np.asarray(f32["eval"]).astype(jnp.bfloat16).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours["eval"], np.float32), expected, rtol=2e-2, atol=2e-2)


def test_the_global_heads_and_attention_dropout_are_config_fields():
    c = base.get_config()
    assert (
        config_checks.model_config(c).lgf.global_heads == 8
        and config_checks.model_config(c).lgf.attention_dropout == 0.1
    )
    c.model.lgf_global_heads, c.model.lgf_attention_dropout = 4, 0.2
    lgf = config_checks.model_config(c).lgf
    assert (lgf.heads, lgf.global_heads, lgf.attention_dropout, lgf.faithful_clone_init) == (8, 4, 0.2, True)

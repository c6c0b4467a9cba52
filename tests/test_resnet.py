"""The audio ResNet on paired inputs (`resnet.paired`, what TPUs run): the same network as on plain ones."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avcanet_jax.avcanet import AudioBranch, ModelConfig
from avcanet_jax.fusion import FusionConfig
from avcanet_jax.layers import Precision
from avcanet_jax.resnet import AUDIO_STEM, RGB_STEM, ResNet, batch_norm, paired, unpaired

F64 = Precision(jnp.float64, jnp.float64)


def test_paired_puts_two_inputs_side_by_side_in_the_channels():
    x = jnp.arange(4 * 3 * 2 * 5).reshape(4, 3, 2, 5)
    p = paired(x)
    assert p.shape == (2, 3, 2, 10)
    np.testing.assert_array_equal(p[1, ..., :5], x[2])
    np.testing.assert_array_equal(p[1, ..., 5:], x[3])
    np.testing.assert_array_equal(unpaired(p), x)


def test_paired_batch_norm_normalises_over_both_inputs_and_tracks_the_same_statistics():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 5, 4, 3)) * 2 + 1, jnp.float32)
    plain, pair = batch_norm(3, nnx.Rngs(0), Precision()), batch_norm(3, nnx.Rngs(0), Precision())
    for bn in (plain, pair):
        bn.scale[...] = jnp.asarray([0.5, 1.5, -2.0])
        bn.bias[...] = jnp.asarray([0.1, -0.2, 0.3])
    np.testing.assert_allclose(pair(paired(x), pairs=2), paired(plain(x)), atol=1e-5)
    np.testing.assert_allclose(pair.mean[...], plain.mean[...], atol=1e-6)
    np.testing.assert_allclose(pair.var[...], plain.var[...], atol=1e-6)
    pair.eval(), plain.eval()  # Evaluation: the running statistics, on both inputs.
    np.testing.assert_allclose(pair(paired(x), pairs=2), paired(plain(x)), atol=1e-5)


@pytest.mark.parametrize("stem", [AUDIO_STEM, RGB_STEM], ids=["audio", "rgb"])
def test_paired_resnet_is_the_plain_resnet(stem):
    """Features, every weight's gradient and the running statistics, in float64 so that only a change of
    arithmetic (not of summation order) could show."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 32, 16, stem.in_channels)))
        runs = []
        for pairs in (False, True):
            model = ResNet(18, stem, nnx.Rngs(0), F64, width=4)
            step = nnx.jit(nnx.value_and_grad(lambda m, p=pairs: (m.features(x, p) ** 2).sum()))
            loss, grads = step(model)
            runs.append((loss, grads, nnx.state(model, nnx.BatchStat)))
        (loss, grads, stats), (loss_p, grads_p, stats_p) = runs
        np.testing.assert_allclose(loss_p, loss, rtol=1e-12)
        for a, b in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * float(jnp.abs(b).max()))
        for a, b in zip(jax.tree.leaves(stats_p), jax.tree.leaves(stats), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
        assert any(float(jnp.abs(s).max()) > 0.1 for s in jax.tree.leaves(stats))  # Statistics did move.


@pytest.mark.parametrize("segments", [4, 3])
def test_audio_branch_pairs_chunks_within_a_clip(segments):
    """With an even segment count the chunks of one clip pair up (a clip's chunks share a device); with
    an odd one the branch runs unpaired. Either way the result is the plain branch's (to float32's
    rounding, which BatchNorm over 3 or 4 chunks magnifies; a wrong pairing differs by whole units)."""
    cfg = ModelConfig(resnet_depth=18, resnet_width=8, dim=32, lgf=FusionConfig(dim=32, ffn_dim=32, heads=4, levels=2))
    audio = jnp.asarray(np.random.default_rng(2).standard_normal((1, segments, 32, 16)), jnp.float32)
    run = nnx.jit(lambda branch, a: branch(a))
    plain = run(AudioBranch(cfg, nnx.Rngs(0)), audio)
    pairs = run(AudioBranch(dataclasses.replace(cfg, resnet_pairs=True), nnx.Rngs(0)), audio)
    np.testing.assert_allclose(pairs, plain, atol=2e-4)

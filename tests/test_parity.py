"""Numerical parity with torchvision, without torch: fixtures hold inputs, outputs and a weight recipe.

Regenerate (needs torch + torchvision): `python tools/make_parity_fixtures.py --seed S --out DIR
[--full-size]`, then run these tests with AVCANET_PARITY_FIXTURES=DIR.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from avcanet_jax import pretrained
from avcanet_jax.resnet import RGB_STEM, ResNet
from avcanet_jax.swin3d import SWIN_SIZES, SwinTransformer3d

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from parity_weights import random_state_dict  # noqa: E402

FIXTURES = os.environ.get("AVCANET_PARITY_FIXTURES", os.path.join(os.path.dirname(__file__), "fixtures", "parity"))


def _fixture(name: str):
    with np.load(os.path.join(FIXTURES, name)) as f:
        manifest = {k: tuple(v) for k, v in json.loads(str(f["manifest"])).items()}
        return f["inputs"], f["outputs"], random_state_dict(manifest, int(f["seed"]))


def test_swin3d_t_matches_torchvision():
    x, expected, state = _fixture("swin3d_t.npz")
    model = SwinTransformer3d(SWIN_SIZES["tiny"], nnx.Rngs(0))
    loaded = pretrained.load_swin3d(model, state)
    assert len(loaded) == sum(1 for k in state if "relative_position_index" not in k and not k.startswith("head."))
    model.eval()
    out = np.asarray(jax.jit(lambda x: model(x))(x))
    np.testing.assert_allclose(out, expected.transpose(0, 1, 2, 3, 4), atol=1e-4, rtol=0)


def test_swin3d_t_matches_torchvision_where_windows_do_not_tile_the_map():
    """9 x 9 x 9 tokens in stage 1: padded maps, shifted windows over padding, shrunken windows."""
    x, expected, state = _fixture("swin3d_t_padded.npz")
    model = SwinTransformer3d(SWIN_SIZES["tiny"], nnx.Rngs(0))
    pretrained.load_swin3d(model, state)
    model.eval()
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x: model(x))(x)), expected, atol=1e-4, rtol=0)


def test_resnet34_matches_torchvision():
    x, expected, state = _fixture("resnet34.npz")
    model = ResNet(34, RGB_STEM, nnx.Rngs(0), num_classes=1000)
    pretrained.load_resnet(model, state, skip=())
    model.eval()
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-4, rtol=0)


def test_audio_resnet_loads_all_but_stem_and_fc():
    _, _, state = _fixture("resnet34.npz")
    model = ResNet(34, rngs=nnx.Rngs(0))  # One-channel (7, 1) stem, no fc.
    before = np.asarray(model.conv1.kernel[...]).copy()
    loaded = pretrained.load_resnet(model, state)
    assert not any(k.startswith(("conv1", "fc")) for k in loaded)
    np.testing.assert_array_equal(model.conv1.kernel[...], before)
    np.testing.assert_array_equal(model.layers[3][2].bn2.var[...], state["layer4.2.bn2.running_var"])


def test_mismatched_checkpoint_names_keys_and_shapes():
    _, _, state = _fixture("resnet34.npz")
    broken = dict(state)
    del broken["layer1.0.conv1.weight"]
    broken["layer9.weight"] = np.zeros(3, np.float32)
    broken["layer2.0.bn1.weight"] = np.zeros(7, np.float32)
    with pytest.raises(pretrained.CheckpointMismatch) as err:
        pretrained.load_resnet(ResNet(34, rngs=nnx.Rngs(0)), broken)
    msg = str(err.value)
    assert "layer1.0.conv1.weight" in msg and "layer9.weight" in msg and "layer2.0.bn1.weight: checkpoint (7,)" in msg

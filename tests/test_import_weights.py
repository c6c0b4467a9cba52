"""Pretrained import into the whole model, saved as an Orbax checkpoint and restored."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file
from test_model import TINY

from avcanet_jax import import_weights, pretrained
from avcanet_jax.avcanet import AVCANet


def _to_torch_layout(module, keys) -> dict[str, np.ndarray]:
    """The checkpoint PyTorch would hold for `module`'s current values (inverse of the converters)."""
    flat = dict(nnx.to_flat_state(nnx.state(module)))
    out = {}
    for name, (path, convert) in keys.items():
        value = np.asarray(flat[path][...])
        if convert is pretrained._linear:
            value = value.T
        elif convert is pretrained._conv:
            value = np.moveaxis(value, (-1, -2), (0, 1))
        out[name] = value
    return out


def test_import_save_and_restore(tmp_path):
    source = AVCANet(TINY, nnx.Rngs(1))  # Plays the pretrained networks.
    swin = _to_torch_layout(source.visual.backbone, pretrained.swin3d_keys(source.visual.backbone))
    resnet = _to_torch_layout(source.audio.backbone, pretrained.resnet_keys(source.audio.backbone))
    resnet["fc.weight"] = np.zeros((1000, 64), np.float32)  # torchvision's classifier: not loaded.
    np.savez(tmp_path / "swin.npz", **swin)
    save_file(resnet, str(tmp_path / "resnet.safetensors"))

    model = AVCANet(TINY, nnx.Rngs(0))
    stem_before = np.asarray(model.audio.backbone.conv1.kernel[...]).copy()
    loaded = import_weights.import_into(model, str(tmp_path / "swin.npz"), str(tmp_path / "resnet.safetensors"))
    assert set(loaded) == {"visual", "audio"}
    for a, b in zip(
        jax.tree.leaves(nnx.state(model.visual.backbone, nnx.Param)),
        jax.tree.leaves(nnx.state(source.visual.backbone, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.audio.backbone.conv1.kernel[...], stem_before)  # Stem kept.
    np.testing.assert_array_equal(
        model.audio.backbone.layers[1][0].bn1.mean[...], source.audio.backbone.layers[1][0].bn1.mean[...]
    )

    out = import_weights.save(model, str(tmp_path / "pretrained"), {"test": True})
    fresh = AVCANet(TINY, nnx.Rngs(5))
    import_weights.restore(fresh, out)
    for a, b in zip(
        jax.tree.leaves(nnx.state(fresh, nnx.Any(nnx.Param, nnx.BatchStat))),
        jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_pth_needs_torch_and_refuses_pickled_code(tmp_path):
    torch = pytest.importorskip("torch")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        pretrained.load_state_dict(tmp_path / "evil.pth")


def test_cli_requires_a_checkpoint():
    with pytest.raises(SystemExit):
        import_weights.main(["--out", "/tmp/x"])

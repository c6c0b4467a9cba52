"""AV-CANet's parts on tiny shapes: masks, gating, level weights, classifier, ablations, options, import."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avcanet_jax import pretrained
from avcanet_jax.avcanet import AVCANet, ModelConfig
from avcanet_jax.fusion import FusionConfig, GlobalFusion, LocalFusion, PyramidLevel, band_mask
from avcanet_jax.layers import DropPath, Mlp
from avcanet_jax.swin3d import SwinConfig, SwinTransformer3d, Windows

TINY_SWIN = SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
TINY = ModelConfig(
    swin=TINY_SWIN, resnet_depth=18, resnet_width=8, dim=32, lgf=FusionConfig(dim=32, ffn_dim=32, heads=4, levels=2)
)


def _batch(b=2, s=4, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 255, (b, s, 4, 32, 32, 3), dtype=np.uint8)
    audio = rng.standard_normal((b, s, 64, 32)).astype(np.float32)
    return jnp.asarray(video), jnp.asarray(audio)


def test_band_masks_widen_with_dilation():
    widths = [band_mask(32, 2**i)[16].sum() for i in range(4)]
    assert widths == [3, 5, 9, 17]
    np.testing.assert_array_equal(band_mask(4, 1), np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]))


def test_band_mask_blocks_attention_outside_the_band():
    level = PyramidLevel(FusionConfig(dim=8, heads=2, ffn_dim=8), reach=1, rngs=nnx.Rngs(0))
    level.eval()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8)), jnp.float32)
    base = level.v_self(x, x, x, band_mask(8, 1))
    far = x.at[0, 7].add(10.0)  # Segment 7 is outside segment 0's band of reach 1.
    np.testing.assert_allclose(level.v_self(far, far, far, band_mask(8, 1))[0, 0], base[0, 0], atol=1e-6)
    assert not np.allclose(level.v_self(far, far, far, None)[0, 0], base[0, 0], atol=1e-3)


def test_gates_choose_between_self_and_cross_attention():
    """For each modality: its self-attention or the cross-attention from the other, as the gates choose
    (the level runs both cross directions as one batch; here each is called on its own)."""
    level = PyramidLevel(FusionConfig(dim=8, heads=2, ffn_dim=8), reach=1, rngs=nnx.Rngs(0))
    level.eval()
    rng = np.random.default_rng(1)
    v, a = (jnp.asarray(rng.standard_normal((2, 6, 8)), jnp.float32) for _ in range(2))
    mask = band_mask(6, 1)
    sides = (
        (level.v_gate_self, level.v_gate_cross, level.v_self(v, v, v, mask), level.cross(v, a, a, mask), level.v_tcn),
        (level.a_gate_self, level.a_gate_cross, level.a_self(a, a, a, mask), level.cross(a, v, v, mask), level.a_tcn),
    )
    for side, (self_gate, cross_gate, sa, ca, tcn) in enumerate(sides):
        for gate, far, expected in ((self_gate, cross_gate, sa), (cross_gate, self_gate, ca)):
            gate.kernel[...] = jnp.zeros_like(gate.kernel[...])
            gate.bias[...] = jnp.full_like(gate.bias[...], 50.0)  # sigmoid -> 1
            far.kernel[...] = jnp.zeros_like(far.kernel[...])
            far.bias[...] = jnp.full_like(far.bias[...], -50.0)  # sigmoid -> 0
            np.testing.assert_allclose(level(v, a)[side], tcn(expected), atol=1e-5)


def test_layers_run_both_ways_at_once_equal_one_call_per_direction():
    """The level-score exchange and the global cross-attention run both directions as one batch
    (`fusion.both_ways`); here each direction is called on its own."""
    cfg = FusionConfig(dim=8, heads=2, ffn_dim=8, levels=3)
    local, glob = LocalFusion(cfg, nnx.Rngs(0)), GlobalFusion(cfg, nnx.Rngs(1))
    local.eval()
    glob.eval()
    rng = np.random.default_rng(3)
    v_levels, a_levels = (jnp.asarray(rng.standard_normal((2, 5, 3, 8)), jnp.float32) for _ in range(2))
    v_w = jax.nn.sigmoid(local.v_score(v_levels)).reshape(10, 3, 1)
    a_w = jax.nn.sigmoid(local.a_score(a_levels)).reshape(10, 3, 1)
    want = (local.exchange(v_w, a_w, a_w).reshape(2, 5, 3), local.exchange(a_w, v_w, v_w).reshape(2, 5, 3))
    for got, w in zip(local.level_weights(v_levels, a_levels), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)
    v, a = v_levels[:, :, 0], a_levels[:, :, 0]
    want_v = (glob.linear_v(glob.attn(v, a, a)) + v).mean(axis=1)
    want_a = (glob.linear_a(glob.attn(a, v, v)) + a).mean(axis=1)
    for got, w in zip(glob(v, a), (want_v, want_a), strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("faithful", [True, False])
def test_faithful_level_weights_make_the_exchange_query_constant(faithful):
    cfg = FusionConfig(dim=8, heads=2, ffn_dim=8, levels=3, faithful_level_weights=faithful)
    local = LocalFusion(cfg, nnx.Rngs(0))
    local.eval()
    for layer in (local.exchange.attn.q, local.exchange.attn.k, local.exchange.ffn.w1, local.exchange.ffn.w2):
        layer.kernel[...] = jnp.full_like(layer.kernel[...], 5.0)  # Make the query's influence visible.
    rng = np.random.default_rng(2)
    v_levels, a_levels = (jnp.asarray(rng.standard_normal((1, 2, 3, 8)), jnp.float32) for _ in range(2))
    v_w, _ = local.level_weights(v_levels, a_levels)
    v_score = jax.nn.sigmoid(local.v_score(v_levels))[..., 0]
    update = np.asarray(v_w - v_score)  # What the exchange layer added to each level's score.
    same_for_all_levels = np.allclose(update, update[..., :1], atol=1e-5)
    assert same_for_all_levels == faithful


def test_concat_classifier_shares_its_weight_with_the_unimodal_heads():
    model = AVCANet(TINY, nnx.Rngs(0))
    model.eval()
    out = nnx.jit(lambda m, v, a: m(v, a))(model, *_batch())
    np.testing.assert_allclose(out["logits"], out["logits_audio"] + out["logits_visual"], atol=1e-5)
    a = jnp.asarray(np.random.default_rng(3).standard_normal((2, 32)), jnp.float32)
    v = jnp.asarray(np.random.default_rng(4).standard_normal((2, 32)), jnp.float32)
    z = model.classifier(a, v)
    w, b = model.classifier.out.kernel[...], model.classifier.out.bias[...]
    np.testing.assert_allclose(z["logits"], jnp.concatenate([a, v], -1) @ w + b, atol=1e-5)
    np.testing.assert_allclose(z["logits_audio"], a @ w[:32] + b / 2, atol=1e-5)
    assert len(jax.tree.leaves(nnx.state(model.classifier, nnx.Param))) == 2  # No extra parameters.


@pytest.mark.parametrize(
    "changes, keys",
    [
        ({"fusion": "sum"}, {"logits", "logits_audio", "logits_visual"}),
        ({"fusion": "gated"}, {"logits"}),
        ({"fusion": "film"}, {"logits"}),
        ({"use_local": False}, {"logits", "logits_audio", "logits_visual"}),
        ({"use_global": False}, {"logits", "logits_audio", "logits_visual"}),
        ({"modalities": "audio"}, {"logits"}),
        ({"modalities": "visual"}, {"logits"}),
    ],
)
def test_ablations_build_and_run(changes, keys):
    model = AVCANet(dataclasses.replace(TINY, **changes), nnx.Rngs(0))
    video, audio = _batch()
    out = model(video, audio)
    assert set(out) == keys and out["logits"].shape == (2, 6)
    assert np.isfinite(np.asarray(out["logits"])).all()
    if changes.get("modalities") == "audio":
        assert model.visual is None and model.local is None
    if changes.get("use_local") is False:
        assert model.local is None and model.glob is not None


def test_bad_model_config_names_the_field():
    with pytest.raises(ValueError, match="model.fusion"):
        ModelConfig(fusion="attention")
    with pytest.raises(ValueError, match="model.lgf.dim"):
        ModelConfig(dim=256)


def test_dropout_only_in_training_and_deterministic_in_eval():
    model = AVCANet(TINY, nnx.Rngs(params=0, dropout=1))
    video, audio = _batch()
    model.train()
    a, b = model(video, audio)["logits"], model(video, audio)["logits"]
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(model(video, audio)["logits"], model(video, audio)["logits"])


def test_bfloat16_compute_keeps_float32_parameters():
    model = AVCANet(dataclasses.replace(TINY, bfloat16=True), nnx.Rngs(0))
    model.eval()
    out = nnx.jit(lambda m, v, a: m(v, a))(model, *_batch())  # Jitted: one compile, not one per op.
    assert out["logits"].dtype == jnp.float32 and np.isfinite(np.asarray(out["logits"])).all()
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("remat", [True, "dots"])
def test_remat_gives_the_same_gradients(remat):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 32, 32, 3)), jnp.float32)

    def grads(remat):
        model = SwinTransformer3d(TINY_SWIN, nnx.Rngs(0), remat=remat)
        model.eval()
        g = nnx.jit(nnx.grad(lambda m: (m(x) ** 2).sum()))(model)
        return jax.tree.leaves(nnx.state(g, nnx.Param))

    for x, y in zip(grads(False), grads(remat), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 3, 3)])
def test_token_rows_are_windows_of_the_map_and_back(shift):
    """A 5 x 9 x 9 map in (2, 7, 7) windows: padded to 6 x 14 x 14, rows of windows in T, H, W order."""
    x = np.random.default_rng(0).standard_normal((2, 5, 9, 9, 3)).astype(np.float32)
    windows = Windows.of(x.shape, (2, 7, 7), shift)
    assert windows.padded == (6, 14, 14) and windows.volume == 98
    rows = windows.rows(jnp.asarray(x))
    assert rows.shape == (2 * 3 * 2 * 2 * 98, 3)
    np.testing.assert_array_equal(windows.map(rows), x)
    assert windows.valid.sum() == x[..., 0].size  # Padding rows are zeros, and only they are invalid.
    np.testing.assert_array_equal(np.asarray(rows)[~windows.valid], 0)
    # The first window of a shifted map starts at the shift (the map is rolled back by it).
    np.testing.assert_array_equal(rows[0], x[0, shift[0], shift[1], shift[2]])


def test_drop_path_keeps_or_drops_each_example_whole_on_its_rows():
    x = jnp.ones((16 * 6, 3))
    drop = DropPath(0.5, nnx.Rngs(dropout=0))
    out = np.asarray(drop(x, batch=16)).reshape(16, 6, 3)
    assert set(np.unique(out)) == {0.0, 2.0} and all(len(np.unique(e)) == 1 for e in out)
    again = DropPath(0.5, nnx.Rngs(dropout=0))(x.reshape(16, 6, 3))  # The same draw as on [batch, ...].
    np.testing.assert_array_equal(out, again)


def test_every_parameter_has_logical_axes():
    model = AVCANet(TINY, nnx.Rngs(0))
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    values = nnx.state(model, nnx.Param)
    for spec, value in zip(jax.tree.leaves(specs, is_leaf=lambda x: x is None or hasattr(x, "index")),
                           jax.tree.leaves(values), strict=True):  # fmt: skip
        assert len(spec) == value.ndim


def test_swin_inflation_from_2d_weights():
    model = SwinTransformer3d(TINY_SWIN, nnx.Rngs(0))
    keys = pretrained.swin3d_keys(model, "mmaction")
    rng = np.random.default_rng(0)
    state2d = {}
    for name, (path, _) in keys.items():
        target = np.asarray(dict(nnx.to_flat_state(nnx.state(model)))[path][...])
        shape = target.shape[::-1] if target.ndim == 2 else target.shape
        if name == "patch_embed.proj.weight":
            shape = (16, 3, 4, 4)
        elif name.endswith("relative_position_bias_table"):
            shape = (13 * 13, target.shape[1])
        state2d[name] = rng.standard_normal(shape).astype(np.float32)
    state2d["head.weight"] = np.zeros((1000, 128), np.float32)  # Ignored.
    pretrained.load_swin3d(model, state2d)  # Detected as 2D: a 4-D patch kernel.
    kernel = np.asarray(model.patch_embed.proj.kernel[...])  # [2, 4, 4, 3, 16]
    np.testing.assert_allclose(kernel.sum(0), state2d["patch_embed.proj.weight"].transpose(2, 3, 1, 0), atol=1e-6)
    table = np.asarray(model.stages[0][0].attn.relative_position_bias_table[...])
    assert table.shape == (15 * 169, 1)
    np.testing.assert_array_equal(
        table[169 * 7 : 169 * 8], state2d["layers.0.blocks.0.attn.relative_position_bias_table"]
    )


def test_mmaction_and_torchvision_layouts_load_the_same_weights():
    a, b = SwinTransformer3d(TINY_SWIN, nnx.Rngs(0)), SwinTransformer3d(TINY_SWIN, nnx.Rngs(1))
    tv, mm = pretrained.swin3d_keys(a, "torchvision"), pretrained.swin3d_keys(a, "mmaction")
    flat = dict(nnx.to_flat_state(nnx.state(a)))
    rng = np.random.default_rng(0)
    by_path = {}
    for name, (path, _) in tv.items():
        t = np.asarray(flat[path][...])
        torch_shape = t.T.shape if t.ndim == 2 and "table" not in name else t.shape
        by_path[path] = rng.standard_normal(torch_shape if t.ndim < 5 else (16, 3, 2, 4, 4))
    tv_state = {name: by_path[path].astype(np.float32) for name, (path, _) in tv.items()}
    mm_state = {"backbone." + name: by_path[path].astype(np.float32) for name, (path, _) in mm.items()}
    pretrained.load_swin3d(a, tv_state)
    pretrained.load_swin3d(b, mm_state)
    for x, y in zip(jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(b, nnx.Param)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_activations_follow_the_logical_rules_under_a_mesh():
    import flax.linen as nn

    from avcanet_jax.layers import DEFAULT_RULES

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    model = AVCANet(TINY, nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    video, audio = _batch(b=4, s=2)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out = jax.jit(lambda s, v, a: nnx.merge(graphdef, s)(v, a))(state, video, audio)
    assert out["logits"].sharding.spec[0] == ("data", "fsdp")  # Batch split over data x fsdp.
    np.testing.assert_allclose(out["logits"], model(video, audio)["logits"], atol=1e-4)


@pytest.mark.parametrize("size", [32, 56])
def test_window_attention_implementations_match_the_reference_path(size, monkeypatch):
    """The whole backbone with the Pallas kernel (in Pallas's interpreter here) against the reference, in
    float64 (in float32 the deep chain amplifies rounding to ~1e-3 in grads). 32 x 32 frames pad stage 1's
    map to whole windows (the kernel then attends normalised rows); 56 x 56 frames need no padding, and the
    LayerNorm, projections, attention and residual run as one kernel (the LayerNorms' gradients included). At
    both sizes each block's second LayerNorm, MLP and residual run as one kernel too (`fused_mlp`), on
    C-major rows in stages 1-3 and row-major ones in stage 4 (128 wide). Each patch merging's LayerNorm and
    reduction run as a kernel as well (`fused_norm`), and where stage 1's first windows need no padding,
    the patch embedding's bias and LayerNorm on its rows in their order (after the convolution on planes)."""
    from avcanet_jax import fused_norm
    from avcanet_jax.layers import Precision

    norms, embedded = [], []
    norm_linear, layer_norm = fused_norm.norm_linear, fused_norm.layer_norm
    monkeypatch.setattr(fused_norm, "norm_linear", lambda rows, *a: norms.append(rows.shape) or norm_linear(rows, *a))
    monkeypatch.setattr(fused_norm, "layer_norm", lambda rows, *a: embedded.append(rows.shape) or layer_norm(rows, *a))

    cfg = SwinConfig(embed_dim=16, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4))  # Block 2 of stage 1 is shifted.
    block = SwinTransformer3d(cfg, nnx.Rngs(0)).stages[0][0]
    assert (block.windows((1, 2, size // 4, size // 4, 16)).valid is None) == (size == 56)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, size, size, 3)), jnp.float64)
        outs, grads = [], []
        for impl in ("xla", "pallas"):  # dot_product: tests/test_window_attention.py, at the op.
            model = SwinTransformer3d(
                dataclasses.replace(cfg, attention=impl), nnx.Rngs(0), Precision(jnp.float64, jnp.float64)
            )
            model.eval()
            fused = [
                block._fuses_mlp(jnp.zeros((32, block.mlp.fc1.in_features)))
                for blocks in model.stages
                for block in blocks
            ]
            assert fused == [impl == "pallas"] * 5
            norms.clear()
            embedded.clear()
            out, g = nnx.jit(lambda m: (m(x), nnx.grad(lambda m: (m(x) ** 2).sum())(m)))(model)
            # Traced twice (the output, the gradient): each merging's rows, 4C wide; stage 1's rows.
            assert [c for _, c in norms] == ([] if impl == "xla" else [64, 128, 256] * 2)
            assert embedded == ([(2 * 14 * 14, 16)] * 2 if impl == "pallas" and size == 56 else [])
            outs.append(np.asarray(out))
            grads.append([np.asarray(v) for v in jax.tree.leaves(nnx.state(g, nnx.Param))])
    # The kernel computes the softmax in float32, as the reference does, and also its backward there
    # (its own formula, so float32 rounding, 1e-6 relative, shows in the gradients).
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-10)
    for a, b in zip(*grads, strict=True):  # The relative-position bias tables and qkv biases included.
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-9)
    with pytest.raises(ValueError, match="attention_dropout"):
        SwinConfig(attention="pallas", attention_dropout=0.1)
    with pytest.raises(ValueError, match="swin.attention"):
        SwinConfig(attention="flash")


def test_approximate_gelu_is_the_tanh_form_in_every_swin_mlp():
    cfg = dataclasses.replace(TINY_SWIN, approximate_gelu=True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 32, 32, 3)), jnp.float32)
    exact, tanh = SwinTransformer3d(TINY_SWIN, nnx.Rngs(0)), SwinTransformer3d(cfg, nnx.Rngs(0))
    mlps = [m for _, m in tanh.iter_modules() if isinstance(m, Mlp)]
    assert len(mlps) == sum(TINY_SWIN.depths) and all(m.approximate_gelu for m in mlps)
    h = jnp.linspace(-4.0, 4.0, 33)
    mlp = mlps[0]
    want = mlp.fc2(jax.nn.gelu(mlp.fc1(h[:, None] * jnp.ones(mlp.fc1.in_features)), approximate=True))
    np.testing.assert_allclose(mlp(h[:, None] * jnp.ones(mlp.fc1.in_features)), want, rtol=1e-6)
    # Same weights, a close but different function.
    difference = np.abs(np.asarray(exact(x)) - np.asarray(tanh(x))).max()
    assert 0 < difference < 5e-2


def test_tpus_regroup_by_products_only_where_windows_shift():
    """Lowered for a TPU, moving rows between the map and unshifted windows is a transpose (no product),
    or with `reshapes_by_kernel` (the patch embedding's move into stage 1's windows) the row-permutation
    kernel where that serves the rows; into or out of shifted ones it is that kernel where it serves the
    rows (narrower than whole lanes; stage 2's maps by its dense plan, stage 1's by its tiled one), else
    the one-hot products."""
    from avcanet_jax.swin3d import regroup

    for shape, shifted_by in (((8, 4, 14, 14, 8), "kernel"), ((8, 4, 14, 14, 128), "products"),
                              ((2, 4, 28, 28, 8), "kernel")):  # fmt: skip
        c = shape[-1]
        whole, plain, shifted = (Windows.whole(shape), Windows.of(shape, (8, 7, 7), (0, 0, 0)),
                                 Windows.of(shape, (8, 7, 7), (4, 3, 3)))  # fmt: skip
        rows = jnp.zeros((math.prod(shape[:-1]), shape[-1]), jnp.bfloat16)
        for src, dst, way in ((whole, plain, None), (plain, whole, None), (plain, shifted, shifted_by),
                              (shifted, whole, shifted_by)):  # fmt: skip
            lowered = jax.jit(partial(regroup, src=src, dst=dst)).trace(rows).lower(lowering_platforms=("tpu",))
            text = lowered.as_text()
            assert text.count("dot_general") == (2 if way == "products" else 0), (c, src, dst)
            assert text.count("tpu_custom_call") == (way == "kernel"), (c, src, dst)
        by_kernel = partial(regroup, src=whole, dst=plain, reshapes_by_kernel=True)
        text = jax.jit(by_kernel).trace(rows).lower(lowering_platforms=("tpu",)).as_text()
        assert "dot_general" not in text and text.count("tpu_custom_call") == (shifted_by == "kernel"), c


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(2, 4, 14, 14, 8), (1, 9, 18, 18, 3)])  # Whole windows; padded and shrunk.
def test_regrouping_by_products_is_exactly_map_then_rows(dtype, shape):
    """What a stage runs on TPUs between the map and its window orders, checked here bit for bit,
    gradients included: into the plain windows, from them to the shifted ones, back to the map."""
    from avcanet_jax.swin3d import regroup_by_products

    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape) * 1e3, dtype)
    whole, plain, shifted = (Windows.whole(shape), Windows.of(shape, (8, 7, 7), (0, 0, 0)),
                             Windows.of(shape, (8, 7, 7), (4, 3, 3)))  # fmt: skip
    assert any(s != p for s, p in zip(shifted.size, shifted.padded, strict=True)) == (shape[1] == 9)

    def grad(fn, rows, shape):
        weights = jnp.cos(jnp.arange(math.prod(shape), dtype=jnp.float32)).reshape(shape)
        return jax.grad(lambda r: (fn(r).astype(jnp.float32) * weights).sum())(rows)

    rows = x.reshape(-1, shape[-1])
    for src, dst in ((whole, plain), (plain, shifted), (shifted, whole)):
        by_products, by_maps = partial(regroup_by_products, src=src, dst=dst), lambda r, s=src, d=dst: d.rows(s.map(r))
        want = by_maps(rows)
        np.testing.assert_array_equal(by_products(rows), want)
        np.testing.assert_array_equal(grad(by_products, rows, want.shape), grad(by_maps, rows, want.shape))
        rows = want

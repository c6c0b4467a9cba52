"""The window-attention implementations against the reference: forward, gradients (the bias included),
shifted-window masks, bfloat16, and the Pallas kernel's per-device shares under a sharded mesh.

The Pallas kernel runs in Pallas's interpreter on CPU: the same kernel body, blocks and grid as on a TPU.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from kernel_checks import assert_same_value_and_grads, pallas_operands

from avcanet_jax import window_attention as wa
from avcanet_jax.layers import DEFAULT_RULES
from avcanet_jax.swin3d import shift_mask

HEADS, HEAD_DIM = 3, 8


def _inputs(batch: int, masked: bool, dtype=jnp.float32, seed: int = 0):
    """qkv for `batch` feature maps of 4 x 12 x 12 in (2, 6, 6) windows (V = 72, nW = 8), shifted or not."""
    rng = np.random.default_rng(seed)
    mask = jnp.asarray(shift_mask((4, 12, 12), (2, 6, 6), (1, 3, 3))) if masked else None
    nw, vol = 8, 72
    qkv = jnp.asarray(rng.standard_normal((batch * nw, vol, 3 * HEADS * HEAD_DIM)), dtype)
    bias = jnp.asarray(rng.standard_normal((HEADS, vol, vol)), dtype)
    return qkv, bias, mask


QKV_BIAS = jnp.linspace(-1.0, 1.0, 3 * HEADS * HEAD_DIM)


def _loss(impl, mask):
    """A loss of (qkv, relative bias, qkv projection bias) in which every output feature counts differently."""
    weights = jnp.cos(jnp.arange(HEADS * HEAD_DIM, dtype=jnp.float32))

    def loss(qkv, bias, qkv_bias=None):
        out = wa.attention(qkv, bias, mask, HEADS, impl, qkv_bias=qkv_bias)
        return (out.astype(jnp.float32) * weights).sum()

    return loss


@pytest.mark.parametrize("impl", ["dot_product", "pallas"])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_and_gradients_equal_the_reference(impl, masked):
    qkv, bias, mask = _inputs(2, masked)
    np.testing.assert_allclose(
        wa.attention(qkv, bias, mask, HEADS, impl), wa.reference(qkv, bias, mask, HEADS), atol=2e-6
    )
    np.testing.assert_allclose(
        wa.attention(qkv, bias, mask, HEADS, impl, qkv_bias=QKV_BIAS),
        wa.reference(qkv + QKV_BIAS, bias, mask, HEADS),
        atol=2e-6,
    )
    want = jax.grad(_loss("xla", mask), argnums=(0, 1, 2))(qkv, bias, QKV_BIAS)
    got = jax.grad(_loss(impl, mask), argnums=(0, 1, 2))(qkv, bias, QKV_BIAS)
    # d qkv, d relative bias (summed over all windows), d qkv projection bias (summed over all tokens).
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))


def test_the_mask_matters_and_each_window_gets_its_own():
    """A kernel that ignored the mask, or gave every window the first one, would fail here."""
    qkv, bias, mask = _inputs(2, masked=True)
    out = wa.pallas(qkv, bias, mask, HEADS)
    assert np.abs(out - wa.reference(qkv, bias, None, HEADS)).max() > 1e-2
    first_only = jnp.broadcast_to(mask[:1], mask.shape)
    assert np.abs(out - wa.reference(qkv, bias, first_only, HEADS)).max() > 1e-2


def test_sums_over_the_grid_into_bfloat16_are_rounded_once_from_float32():
    """`run_kernel(sums=...)`: a bfloat16 output the grid steps sum into is summed in float32 and rounded
    once, as the kernels' bfloat16 weight gradients are; summed in bfloat16 itself, 256 + 1 + 1 + ... would
    stay 256 (bfloat16 steps by 2 there)."""
    from jax.experimental import pallas as pl

    def kernel(x_ref, out_ref):
        wa.zero_on_first_step(out_ref)
        out_ref[...] += x_ref[...].astype(out_ref.dtype)

    blocks = np.ones((64, 8, 128), np.float32)
    blocks[0] = 256.0
    x = jnp.asarray(blocks.reshape(-1, 128))

    def summed(sums):
        out = jax.ShapeDtypeStruct((8, 128), jnp.bfloat16)
        specs = [pl.BlockSpec((8, 128), lambda i: (i, 0))]
        return wa.run_kernel(kernel, (x,), 64, specs, wa.resident((8, 128)), out, "arbitrary", None, True, sums=sums)

    once, each_step = summed((0,)), summed(())
    assert once.dtype == jnp.bfloat16
    np.testing.assert_array_equal(once, jnp.asarray(blocks.sum(0), jnp.bfloat16))  # 319 -> 320.
    np.testing.assert_array_equal(each_step, np.full((8, 128), 256.0))


def test_bfloat16_stays_within_bfloat16_rounding_of_the_float32_result():
    qkv, bias, mask = _inputs(1, masked=True, dtype=jnp.bfloat16)
    exact = wa.reference(qkv.astype(jnp.float32), bias.astype(jnp.float32), mask, HEADS)
    out = wa.pallas(qkv, bias, mask, HEADS)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), exact, atol=3e-2)
    grads = jax.grad(_loss("pallas", mask), argnums=(0, 1))(qkv, bias)
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    want = jax.grad(_loss("xla", mask), argnums=(0, 1))(qkv.astype(jnp.float32), bias.astype(jnp.float32))
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=3e-2 * float(np.abs(w).max()))


def test_under_a_sharded_mesh_each_device_attends_its_own_windows_and_bias_gradients_are_summed():
    """Both bias gradients are partial sums per device; shard_map's transpose must add them up."""
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    qkv, bias, mask = _inputs(4, masked=True)  # 32 windows: 8 per device over data x fsdp.
    want = jax.value_and_grad(_loss("xla", mask), argnums=(0, 1, 2))(qkv, bias, QKV_BIAS)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        assert wa._batch_axes(mesh) == ("data", "fsdp")
        sharded = jax.device_put(qkv, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
        step = jax.jit(jax.value_and_grad(_loss("pallas", mask), argnums=(0, 1, 2)))
        text = step.lower(sharded, bias, QKV_BIAS).as_text()
        got = step(sharded, bias, QKV_BIAS)
    assert "shard_map" in text or "manual" in text  # The kernel ran per device, not on gathered windows.
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))


@pytest.mark.parametrize("masked", [False, True])
def test_the_cudnn_path_under_a_sharded_mesh_runs_per_device(masked):
    """The code the "cudnn" attention runs, with XLA in place of cuDNN (`implementation=None`): each
    device's windows are laid out and attended locally, and the bias gradients are summed over devices."""
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    qkv, bias, mask = _inputs(4, masked)
    weights = jnp.cos(jnp.arange(HEADS * HEAD_DIM, dtype=jnp.float32))

    def loss(fn):
        return lambda q, b: (fn(q, b) * weights).sum()

    want = jax.value_and_grad(loss(lambda q, b: wa.reference(q, b, mask, HEADS)), argnums=(0, 1))(qkv, bias)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        sharded = jax.device_put(qkv, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
        fn = loss(lambda q, b: wa.cudnn(q, b, mask, HEADS, implementation=None))
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        text = step.lower(sharded, bias).as_text()
        got = step(sharded, bias)
    assert "shard_map" in text or "manual" in text
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))


def test_blocks_follow_the_mask_period_and_the_score_budget():
    assert wa.block_windows(n=512, nw=16, vol=196) == 8  # 8 x 196^2 float32 scores = 1.2 MB.
    assert wa.block_windows(n=32, nw=1, vol=196) == 8
    assert wa.block_windows(n=32, nw=1, vol=64) == 32
    assert wa.block_windows(n=32, nw=1, vol=64, width=3 * 768, itemsize=2) == 4  # Stage 4: a wide input.
    assert wa.block_windows(n=24, nw=3, vol=196) == 3  # A block never straddles two runs of masks.
    assert wa.block_windows(n=14, nw=1, vol=196) == 7


def test_an_unknown_implementation_is_refused():
    qkv, bias, _ = _inputs(1, masked=False)
    with pytest.raises(ValueError, match="flash"):
        wa.attention(qkv, bias, None, HEADS, "flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's fused attention runs on NVIDIA GPUs only")
@pytest.mark.parametrize("masked", [False, True])
def test_cudnn_equals_the_reference_at_stage_1_shapes(masked):
    """Swin-T's stage 1 in bf16: 196-token windows (4 x 7 x 7), 3 heads of 32, 16 windows per map, shifted
    (0, 3, 3) or not; forward and gradients, the relative bias's included, within bf16 rounding of the
    float32 reference. On a GPU (no conftest: it would force the CPU):
    `python -m pytest --noconftest -o addopts= tests/test_window_attention.py -k stage_1_shapes`."""
    heads, head_dim, nw, vol = 3, 32, 16, 196
    rng = np.random.default_rng(0)
    mask = jnp.asarray(shift_mask((4, 28, 28), (4, 7, 7), (0, 3, 3))) if masked else None
    qkv = jnp.asarray(rng.standard_normal((2 * nw, vol, 3 * heads * head_dim)), jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal((heads, vol, vol)), jnp.bfloat16)
    weights = jnp.cos(jnp.arange(heads * head_dim, dtype=jnp.float32))

    def loss(impl):
        return lambda q, b: (wa.attention(q, b, mask, heads, impl).astype(jnp.float32) * weights).sum()

    exact = [x.astype(jnp.float32) for x in (qkv, bias)]
    out = jax.jit(lambda q, b: wa.attention(q, b, mask, heads, "cudnn"))(qkv, bias)
    assert out.dtype == jnp.bfloat16
    text = jax.jit(jax.grad(loss("cudnn"), argnums=(0, 1))).lower(qkv, bias).compile().as_text()
    assert text.count("fmha") >= 2, "cuDNN's fused attention kernels (forward, backward) are not in the program"
    np.testing.assert_allclose(np.asarray(out, np.float32), wa.reference(*exact, mask, heads), atol=3e-2)
    got = jax.jit(jax.grad(loss("cudnn"), argnums=(0, 1)))(qkv, bias)
    want = jax.grad(loss("xla"), argnums=(0, 1))(*exact)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=3e-2 * float(np.abs(w).max()))


@pytest.mark.parametrize("masked", [False, True])
def test_token_rows_equal_windows_forward_and_gradients(masked):
    """qkv as [windows * V, 3C] rows (how the Swin blocks hold their tokens): the kernel reads the rows
    in blocks of whole windows, with the same numbers as on [windows, V, 3C]."""
    qkv, bias, mask = _inputs(2, masked)
    rows = qkv.reshape(-1, qkv.shape[-1])
    want = wa.attention(qkv, bias, mask, HEADS, "pallas", qkv_bias=QKV_BIAS)
    got = wa.attention(rows, bias, mask, HEADS, "pallas", qkv_bias=QKV_BIAS)
    assert got.shape == (rows.shape[0], HEADS * HEAD_DIM)
    np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-6)
    jaxpr = jax.make_jaxpr(lambda q: wa.attention(q, bias, mask, HEADS, "pallas"))(rows)
    assert rows.shape in {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}  # No split into windows first.

    # Gradients on rows against the reference's on windows: d qkv, d relative bias, d qkv projection bias.
    want = jax.grad(_loss("xla", mask), argnums=(0, 1, 2))(qkv, bias, QKV_BIAS)
    got = jax.grad(_loss("pallas", mask), argnums=(0, 1, 2))(rows, bias, QKV_BIAS)
    assert got[0].shape == rows.shape
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.reshape(w.shape), w, atol=5e-6 * float(np.abs(w).max()))


def test_token_rows_that_no_block_of_windows_tiles_are_split_into_windows_first():
    """9-token windows, 2 of them: no whole number of windows makes 8 float32 rows, so the rows go to the
    kernel as windows (a copy) and give the same result; the other paths take rows too."""
    rng = np.random.default_rng(1)
    qkv = jnp.asarray(rng.standard_normal((2, 9, 3 * HEADS * HEAD_DIM)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((HEADS, 9, 9)), jnp.float32)
    assert wa.block_windows(n=2, nw=1, vol=9, rows=wa.tile_rows(4)) == 0
    want = wa.reference(qkv, bias, None, HEADS)
    for impl in ("pallas", "xla", "dot_product"):
        got = wa.attention(qkv.reshape(18, -1), bias, None, HEADS, impl)
        np.testing.assert_allclose(got, want.reshape(18, -1), atol=2e-6)


def test_blocks_of_token_rows_span_whole_tiles():
    assert wa.tile_rows(2) == 16 and wa.tile_rows(4) == 8
    assert wa.block_windows(n=512, nw=16, vol=196, rows=16) == 8  # Stage 1: 1,568 rows per block.
    assert wa.block_windows(n=128, nw=4, vol=196, rows=16) == 4  # Stage 2: 784 rows.
    assert wa.block_windows(n=14, nw=1, vol=196, rows=16) == 0  # 196 * 7 rows is not a multiple of 16.


def _sublayer_inputs(batch: int, masked: bool, dtype=jnp.float32):
    """Token rows [windows * V, C] (for `_inputs`' windows), LayerNorm weights, qkv projection [C, 3C] and
    bias, output projection [C, C] and bias, relative bias; the shift mask."""
    _, bias, mask = _inputs(batch, masked, dtype)
    rng = np.random.default_rng(3)
    c = HEADS * HEAD_DIM
    rows = jnp.asarray(rng.standard_normal((batch * 8 * 72, c)) * 2 + 0.5, dtype)
    scale = jnp.asarray(rng.standard_normal(c) * 0.3 + 1, jnp.float32)
    shift = jnp.asarray(rng.standard_normal(c) * 0.1, jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((c, 3 * c)) * c**-0.5, dtype)
    proj = jnp.asarray(rng.standard_normal((c, c)) * c**-0.5, dtype)
    proj_bias = jnp.asarray(rng.standard_normal(c) * 0.1, dtype)
    return (rows, scale, shift, kernel, QKV_BIAS.astype(dtype), proj, proj_bias, bias), mask


def _sublayer_loss(fused: bool, mask, keep=None):
    """A loss of (rows, LayerNorm scale and shift, qkv kernel and bias, output projection and bias, relative
    bias) through rows + keep * the attention sublayer: fused, or flax's LayerNorm, XLA's products and the
    reference attention."""
    weights = jnp.cos(jnp.arange(HEADS * HEAD_DIM, dtype=jnp.float32))

    def loss(rows, scale, shift, kernel, qkv_bias, proj, proj_bias, bias):
        if fused:
            out = wa.sublayer(rows, scale, shift, 1e-5, kernel, qkv_bias, proj, proj_bias, bias, mask, HEADS, keep)
        else:
            norm = nnx.LayerNorm(rows.shape[-1], epsilon=1e-5, dtype=rows.dtype, rngs=nnx.Rngs(0))
            norm.scale[...], norm.bias[...] = scale, shift
            y = wa.attention(norm(rows) @ kernel, bias, mask, HEADS, "xla", qkv_bias=qkv_bias) @ proj + proj_bias
            out = rows + (y if keep is None else y * keep[:, None].astype(y.dtype))
        return (out.astype(jnp.float32) * weights).sum()

    return loss


ARGNUMS = tuple(range(8))
# 4 examples of 8 windows of 72 tokens; the third dropped, the others kept with probability 0.8.
KEEP = jnp.repeat(jnp.asarray([1.25, 1.25, 0.0, 1.25], jnp.float32), 8 * 72)


@pytest.mark.parametrize(("masked", "keep"), [(False, None), (True, KEEP)])
def test_the_fused_sublayer_equals_layer_norm_projections_attention_and_residual(masked, keep, monkeypatch):
    """LayerNorm, qkv projection, attention, output projection, stochastic depth and residual in one kernel
    on C-major rows: the same forward and gradients (rows, both LayerNorm weights, both projections'
    weights and biases, relative bias) as flax's LayerNorm, XLA's products and the reference. 32 windows of
    72 tokens make two grid steps of 16 (whole 128-lane rows of tokens), each spanning two runs of the 8
    masks; a small score budget makes each step attend 4 windows at a time."""
    monkeypatch.setattr(wa, "SCORE_BYTES", 4 * 72 * 72 * 4)
    args, mask = _sublayer_inputs(4, masked)
    assert wa.block_rows_windows(32, 8, 72) == 16 and wa._chunk((16, 72, 3 * HEADS * HEAD_DIM)) == 4
    assert_same_value_and_grads(_sublayer_loss(True, mask, keep), _sublayer_loss(False, mask, keep), args, ARGNUMS)
    rows = args[0]
    jaxpr = jax.make_jaxpr(lambda r: wa.sublayer(r, *args[1:3], 1e-5, *args[3:], mask, HEADS))(rows)
    assert rows.T.shape in {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}  # C-major: [C, tokens].


def test_the_fused_sublayer_reads_rows_of_whole_lanes_row_major(monkeypatch):
    """Rows that fill whole 128-lane tiles go to the kernel as they are ([tokens, C] blocks of whole windows
    whose rows fill whole tiles: here one 72-token window a step); forced for these 24-wide rows."""
    monkeypatch.setattr(wa, "LANES", 24)
    args, mask = _sublayer_inputs(4, True)
    assert_same_value_and_grads(_sublayer_loss(True, mask, KEEP), _sublayer_loss(False, mask, KEEP), args, ARGNUMS)
    rows = args[0]
    jaxpr = jax.make_jaxpr(lambda r: wa.sublayer(r, *args[1:3], 1e-5, *args[3:], mask, HEADS))(rows)
    operands = {v.aval.shape for v in pallas_operands(jaxpr.jaxpr)}
    assert rows.shape in operands and rows.T.shape not in operands


def test_the_fused_sublayer_in_bfloat16_and_under_a_sharded_mesh():
    """bf16 within bf16 rounding of float32; under a mesh each device runs its own rows (and their
    stochastic-depth scales), and its share of every weight's gradient is summed over devices."""
    args, mask = _sublayer_inputs(4, True, jnp.bfloat16)
    exact = [a.astype(jnp.float32) for a in args]
    value, grads = jax.value_and_grad(_sublayer_loss(True, mask), argnums=ARGNUMS)(*args)
    want_value, want = jax.value_and_grad(_sublayer_loss(False, mask), argnums=ARGNUMS)(*exact)
    assert grads[0].dtype == grads[3].dtype == jnp.bfloat16
    np.testing.assert_allclose(value, want_value, rtol=3e-2)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=3e-2 * float(np.abs(w).max()))

    want = jax.value_and_grad(_sublayer_loss(False, mask, KEEP), argnums=ARGNUMS)(*exact)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        step = jax.jit(jax.value_and_grad(_sublayer_loss(True, mask, KEEP), argnums=ARGNUMS))
        got = step(jax.device_put(exact[0], rows), *exact[1:])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))


def test_fused_sublayer_blocks_fill_whole_lanes_of_tokens():
    assert wa.block_rows_windows(n=512, nw=256, vol=196) == 32  # Stage 1: 6,272 tokens = 49 x 128.
    assert wa.block_rows_windows(n=32, nw=4, vol=196) == 32  # Stage 3: a block spans 8 runs of masks.
    assert wa.block_rows_windows(n=8, nw=1, vol=196) == 8  # Stage 4: no whole lanes; the whole array.
    assert wa.block_rows_windows(n=6, nw=3, vol=9) == 6
    assert all(wa.sublayer_pays(c) for c in (96, 192, 384)) and not wa.sublayer_pays(768)  # Swin-T's stages.

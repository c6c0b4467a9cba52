"""`avcanet_jax.step_profile`: bytes as the TPU lays them out, parts from named scopes, totals that add up."""

from __future__ import annotations

import pytest

from avcanet_jax import step_profile

# The shape of the TPU compiler's output, cut down: a prefetch into VMEM (S(1)), a fusion reading it and
# writing HBM, a slice of a parameter, an eviction back to HBM, and a collective.
HLO = """HloModule jit_train, entry_computation_layout={()}

%fused_computation.1 (param_0: bf16[512,196,32]) -> bf16[512,196,32] {
  %param_0 = bf16[512,196,32]{2,1,0} parameter(0)
  ROOT %negate.9 = bf16[512,196,32]{2,1,0} negate(%param_0), metadata={op_name="jit(train)/x"}
}

ENTRY %main.1 (param.0: bf16[512,196,32], param.1: f32[512,512]) -> f32[8] {
  %param.0 = bf16[512,196,32]{2,1,0:T(8,128)(2,1)} parameter(0), metadata={op_name="state"}
  %param.1 = f32[512,512]{1,0:T(8,128)} parameter(1), metadata={op_name="state"}
  %copy-start.1 = (bf16[512,196,32]{2,1,0:T(8,128)(2,1)S(1)}, bf16[512,196,32]{2,1,0:T(8,128)(2,1)}, u32[]{:S(2)}) copy-start(%param.0), backend_config={"dma_priority":1}
  %copy-done.1 = bf16[512,196,32]{2,1,0:T(8,128)(2,1)S(1)} copy-done(%copy-start.1)
  %fusion.1 = bf16[512,196,32]{2,1,0:T(8,128)(2,1)} fusion(%copy-done.1), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train)/transpose(jvp(visual))/swin/stage1/block0/attention/mul"}, backend_config={"window_config":{"estimated_cycles":"3000"}}
  %slice-start.1 = ((f32[512,512]{1,0:T(8,128)}), f32[128,512]{1,0:T(8,128)S(1)}, s32[]{:S(2)}) slice-start(%param.1), slice={[0:128], [0:512]}
  %slice-done.1 = f32[128,512]{1,0:T(8,128)S(1)} slice-done(%slice-start.1)
  %fusion.2 = f32[128,512]{1,0:T(8,128)S(1)} fusion(%slice-done.1), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train)/optimizer/mul"}, backend_config={"window_config":{"estimated_cycles":"1000"}}
  %copy-start.2 = (f32[128,512]{1,0:T(8,128)}, f32[128,512]{1,0:T(8,128)S(1)}, u32[]{:S(2)}) copy-start(%fusion.2)
  %copy-done.2 = f32[128,512]{1,0:T(8,128)} copy-done(%copy-start.2)
  %all-reduce.1 = f32[8]{0:T(128)} all-reduce(%copy-done.2), to_apply=%fused_computation.1, metadata={op_name="jit(train)/jvp()/reduce_sum"}
  ROOT %tuple.1 = (f32[8]{0:T(128)}) tuple(%all-reduce.1)
}
"""


def test_leaf_bytes_pads_to_tiles_and_skips_on_chip_memory():
    # 196 x 32 bf16: rows padded to 200 (8-row tiles), lanes to 128: 512 * 200 * 128 * 2 bytes.
    assert step_profile.leaf_bytes("bf16[512,196,32]{2,1,0:T(8,128)(2,1)}") == 512 * 200 * 128 * 2
    # The minor-to-major order decides which dimensions the tile pads: {1,2,0} makes 32 the lane dimension.
    assert step_profile.leaf_bytes("f32[4,32,196]{1,2,0:T(8,128)}") == 4 * 200 * 128 * 4
    assert step_profile.leaf_bytes("f32[4,32,196]{2,1,0:T(8,128)}") == 4 * 32 * 256 * 4
    assert step_profile.leaf_bytes("f32[4,32,196]{2,1,0:T(8,128)S(1)}") == 0
    assert step_profile.leaf_bytes("f32[4,32,196]{2,1,0:T(8,128)S(1)}", hbm_only=False) == 4 * 32 * 256 * 4
    assert (
        step_profile.leaf_bytes("(f32[]{:T(128)}, bf16[1536]{0:T(1024)(128)(2,1)})") == 4 + 2048 * 2
    )  # A scalar counts its own bytes.


def test_parts_follow_named_scopes_forward_and_backward():
    assert step_profile.scope_path("jit(train)/transpose(jvp(visual))/swin/stage1") == ["visual", "swin", "stage1"]
    part = step_profile.part_of
    assert part("jit(train)/jvp(visual)/swin/stage2/block1/mlp/dot_general", "fusion") == "swin.stage2.mlp"
    assert part("jit(train)/jvp(visual)/swin/stage2/block1/add", "fusion") == "swin.stage2.residual"
    assert part("jit(train)/jvp(visual)/swin/stage1/merge/concatenate", "fusion") == "swin.stage1.merge"
    assert part("jit(train)/jvp(visual)/swin/patch_embed/conv", "convolution") == "swin.patch_embed"
    assert part("jit(train)/jvp(visual)/reduce_sum", "fusion") == "visual.head"
    assert part("jit(train)/transpose(jvp(local_fusion))/mul", "fusion") == "local_fusion"
    assert part("jit(train)/jvp()/reduce_sum", "all-reduce-start") == "collectives"
    assert part("jit(train)/jvp(jit(_bernoulli))/add", "fusion") == "other"


def test_entry_ops_count_each_transfer_once_and_sum_to_the_totals():
    ops = {op.name: op for op in step_profile.parse_entry(HLO)}
    x = 512 * 200 * 128 * 2  # param.0 as laid out in HBM.
    assert ops["copy-start.1"].hbm_bytes == x and ops["copy-done.1"].hbm_bytes == 0  # Read into VMEM once.
    assert ops["fusion.1"].hbm_bytes == x  # Its operand is in VMEM; it writes its result to HBM.
    assert ops["slice-start.1"].hbm_bytes == 128 * 512 * 4  # Only the slice is read.
    assert ops["fusion.2"].hbm_bytes == 0
    assert ops["copy-done.2"].hbm_bytes == 128 * 512 * 4  # The eviction writes HBM.
    # Unnamed asynchronous copies take the part of what reads (prefetch) or wrote (eviction) them.
    assert ops["copy-start.1"].part == "swin.stage1.attention" and ops["copy-start.1"].backward
    assert ops["copy-done.2"].part == "optimizer"
    assert ops["all-reduce.1"].part == "collectives"
    summary = step_profile.summarize(list(ops.values()), clock_hz=1e9, top=2)
    assert summary["cycles"] == 4000 and summary["estimated_ms"] == pytest.approx(4e-3)
    assert sum(r["bytes"] for r in summary["parts"]) == summary["hbm_bytes"] == sum(o.hbm_bytes for o in ops.values())
    assert sum(r["cycles"] for r in summary["parts"]) == summary["cycles"]
    assert sum(r["bytes_share"] for r in summary["parts"]) == pytest.approx(1.0)
    assert [op["name"] for op in summary["top_by_cycles"]] == ["fusion.1", "fusion.2"]
    report = step_profile.format_report(summary)
    assert "swin.stage1.attention" in report and "top instructions by cycles" in report


def test_no_entry_computation_is_an_error():
    with pytest.raises(ValueError, match="ENTRY"):
        step_profile.parse_entry("HloModule m\n")


# Collectives as the TPU compiler prints them: a combined all-reduce over a mesh axis, an all-gather inside
# an asynchronous collective fusion, a collective-permute start ((operand, output, context)), an all-to-all
# with iota replica groups and a reduce-scatter with listed groups.
COLLECTIVES_HLO = """HloModule jit_train
%async_collective (param_0.1: f32[128,512]) -> f32[512,512] {
  %param_0.1 = f32[128,512]{1,0:T(8,128)S(1)} parameter(0)
  ROOT %all-gather.7 = f32[512,512]{1,0:T(8,128)} all-gather(%param_0.1), channel_id=3, replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}
}
ENTRY %main.1 (p: bf16[64,64]) -> bf16[64,64] {
  %all-reduce.1 = (bf16[64,64]{1,0:T(8,128)(2,1)}, bf16[32]{0:T(256)}) all-reduce(%p, %q), channel_id=1, replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0','axis_1'}, to_apply=%add
  %collective-permute-start.1 = (bf16[2,16]{1,0}, bf16[2,16]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%p), channel_id=2, source_target_pairs={{1,3}}
  %all-to-all.1 = bf16[2,4,8]{2,1,0} all-to-all(%p), channel_id=4, replica_groups=[2,4]<=[8], dimensions={1}
  %reduce-scatter.1 = f32[16]{0} reduce-scatter(%p), channel_id=5, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %all-reduce.2 = f32[] all-reduce(%p), channel_id=6, to_apply=%add
}
"""


def test_interconnect_counts_the_bytes_each_device_sends_per_collective():
    sent = step_profile.interconnect(COLLECTIVES_HLO, devices=8)
    assert sent["all-reduce"] == int((64 * 64 + 32) * 2 * 2 * 7 / 8)  # Over all 8 devices; a scalar adds 0.
    assert sent["all-gather"] == 512 * 512 * 4 * 3 // 4  # Over axis_0 (4 devices).
    assert sent["collective-permute"] == 2 * 16 * 2  # The operand, once.
    assert sent["all-to-all"] == 2 * 4 * 8 * 2 * 3 // 4  # Groups of 4.
    assert sent["reduce-scatter"] == 16 * 4 * 1  # Its share, from each of the 1 other device of a pair.
    assert sent["total"] == sum(v for k, v in sent.items() if k != "total")
    # No printed replica groups: the group is every device.
    assert step_profile.interconnect(HLO, devices=8) == {"all-reduce": 8 * 4 * 2 * 7 // 8, "total": 56}

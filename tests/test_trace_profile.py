"""The measured step profile: a real `jax.profiler` trace and XLA dump of a small program, attributed to
the model's parts by `jax.named_scope`, and the GPU spellings it must match."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from avcanet_jax import trace_profile

PROGRAM = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp

    @jax.jit
    def step(x):
        with jax.named_scope("visual"), jax.named_scope("swin"), jax.named_scope("stage1"):
            with jax.named_scope("attention"):
                y = jnp.tanh(x @ x)
        with jax.named_scope("loss"):
            return (y * y).sum()

    x = jnp.ones((256, 256))
    step(x).block_until_ready()
    with jax.profiler.trace(sys.argv[1]):
        for _ in range(2):
            step(x).block_until_ready()
    """
)


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("trace")
    trace, dump = str(root / "trace"), str(root / "dump")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text"}
    subprocess.run([sys.executable, "-c", PROGRAM, trace], env=env, check=True, capture_output=True, timeout=300)
    return trace, dump


def test_the_traced_kernels_are_attributed_to_named_parts_that_add_up(traced):
    summary = trace_profile.summarize(*traced, steps=2)
    assert summary["total_ms"] > 0
    assert sum(summary["parts"].values()) == pytest.approx(summary["total_ms"])
    named = [k for k in summary["kernels"] if k[3].startswith("jit(step)/")]
    assert named, summary["kernels"]  # Each kernel found its HLO instruction's op_name in the dump.
    assert set(summary["parts"]) <= {"swin.stage1.attention", "loss"}
    assert "kernel time per step" in trace_profile.format_report(summary)


def test_without_a_dump_kernels_still_add_up(traced):
    summary = trace_profile.summarize(traced[0], steps=2)
    assert sum(summary["parts"].values()) == pytest.approx(summary["total_ms"])
    assert set(summary["parts"]) == {"(no op_name)"}


def test_gpu_kernel_names_find_their_instruction(tmp_path):
    """XLA:GPU names a kernel for its fusion with '.' made '_'; library kernels get their library's row."""
    (tmp_path / "module_0007.jit_train.sm_9.0_gpu_after_optimizations.txt").write_text(
        "  %loop_add_fusion.11 = bf16[8]{0} fusion(%p), kind=kLoop, calls=%f, "
        'metadata={op_name="jit(train)/jvp(visual)/swin/stage2/block0/mlp/add"}\n'
    )
    names = trace_profile.op_names(str(tmp_path))
    assert names[(7, trace_profile._kernel_name("loop_add_fusion_11"))].endswith("stage2/block0/mlp/add")
    assert trace_profile._library_part("cudnn_generated_fort_native_sdpa_sm90_flash_bprop") == "(cuDNN attention)"
    assert trace_profile._library_part("void cudnn::fusion::fmha_dbias<true>") == "(cuDNN attention)"
    assert trace_profile._library_part("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT") == "(library matmul)"
    conv = "sm90_xmma_wgrad_indexed_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc"
    assert trace_profile._library_part(conv) == "(cuDNN convolution)"
    # XLA's own kernels are not library calls, whatever their names contain.
    assert trace_profile._library_part("loop_convert_multiply_fusion_11") == "(no op_name)"
    assert trace_profile._library_part("gemm_fusion_dot_1486") == "(no op_name)"


def test_a_folder_without_a_trace_is_named():
    with pytest.raises(FileNotFoundError, match="xplane"):
        trace_profile.kernel_times("/nonexistent")

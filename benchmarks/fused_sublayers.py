r"""One Swin block's two halves on one TPU chip, each as one Pallas kernel against the path without it.

  python benchmarks/fused_sublayers.py [--topology=v5e:1x1] [--clips=2]

For each Swin-T stage, at the per-chip shapes of the base recipe (`--clips` clips of 16 snippets of
8 x 112 x 112 per chip), compiles ahead of time for a TPU (no TPU needed: libtpu's compiler runs on
this CPU) the forward and backward pass of a real `SwinBlock3d`'s halves in bfloat16 and training mode
(stochastic depth on), and prints the compiler's estimated cycles and the HBM bytes of each
(`avcanet_jax.step_profile`; kernels' cycles from their cost estimates, as `aot --profile` models them):

- attention half, rows + DropPath(W-MSA(LN(rows))): the Pallas attention kernel on qkv with XLA's
  LayerNorm, projections and residual around it, against `window_attention.sublayer` (all in one kernel;
  measured at every width, though the model uses it only up to `window_attention.SUBLAYER_MAX_WIDTH`);
- MLP half, rows + DropPath(MLP(LN(rows))): XLA's, against `fused_mlp.residual_mlp`.

The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
from unittest import mock

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import topologies

from avcanet_jax import aot, step_profile, window_attention  # Importing aot sets libtpu's environment.
from avcanet_jax.layers import BF16
from avcanet_jax.swin3d import SwinBlock3d, SwinConfig

# Swin-T's stages on one snippet of 8 x 112 x 112: (T', H', W', C), stage 4's map padded by patch merging.
STAGES = ((4, 28, 28, 96), (4, 14, 14, 192), (4, 7, 7, 384), (4, 4, 4, 768))


def compile_half(half: str, impl: str, fused: bool, shape, device) -> dict:
    """Cycles and HBM bytes of one block's `half` ("attention" or "mlp"), forward and backward."""
    c = shape[-1]
    block = SwinBlock3d(c, c // 32, (0, 0, 0), 0.1, SwinConfig(attention=impl), nnx.Rngs(0), BF16)
    windows = block.windows(shape)
    graphdef, state = nnx.split(block)

    def step(state, rows, cotangent):
        def run(state, rows):
            return getattr(nnx.merge(graphdef, state), f"_{half}")(rows, windows)

        out, vjp = jax.vjp(run, state, rows)
        return out, vjp(cotangent)

    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)  # noqa: E731
    rows = jax.ShapeDtypeStruct((shape[0] * shape[1] * shape[2] * shape[3], c), jnp.bfloat16, sharding=sharding)
    # Without the fused attention sublayer, blocks attend through the kernel on qkv; with it forced at every
    # width (the model uses it up to SUBLAYER_MAX_WIDTH: this shows why not at stage 4's).
    width = c if fused else 0
    with mock.patch.object(window_attention, "SUBLAYER_MAX_WIDTH", width):
        compiled = jax.jit(step).lower(jax.tree.map(abstract, state), rows, rows).compile()
    kind = aot._kind(device.device_kind)
    _, peak_flops, bandwidth = aot.CHIPS[kind]
    roofline = step_profile.Roofline(aot.CLOCK_HZ[kind], peak_flops, bandwidth)
    ops = step_profile.parse_entry(compiled.as_text(), roofline)
    return {"cycles": sum(o.cycles for o in ops), "hbm_bytes": sum(o.hbm_bytes for o in ops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="v5e:1x1")
    parser.add_argument("--clips", type=int, default=2, help="clips (of 16 snippets) per chip")
    args = parser.parse_args()
    device = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices[0]
    results = []
    for stage, (t, h, w, c) in enumerate(STAGES, start=1):
        shape = (16 * args.clips, t, h, w, c)
        for half, unfused in (("attention", ("pallas", False)), ("mlp", ("xla", False))):
            before = compile_half(half, *unfused, shape, device)
            after = compile_half(half, "pallas", True, shape, device)
            results.append({"stage": stage, "C": c, "half": half, "without": before, "fused": after})
            print(
                f"stage {stage} (C={c}) {half}: without {before['cycles'] / 1e6:.3f} M cycles, "
                f"{before['hbm_bytes'] / 1e6:.0f} MB; fused {after['cycles'] / 1e6:.3f} M cycles, "
                f"{after['hbm_bytes'] / 1e6:.0f} MB",
                flush=True,
            )
    print(json.dumps({"topology": args.topology, "clips_per_chip": args.clips, "halves": results}))


if __name__ == "__main__":
    main()

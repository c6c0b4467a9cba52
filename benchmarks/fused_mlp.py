r"""One Swin block's second half on one TPU chip: XLA's LayerNorm, MLP and residual against the fused kernel.

  python benchmarks/fused_mlp.py [--topology=v5e:1x1] [--clips=2]

For each Swin-T stage, at the per-chip shapes of the base recipe (`--clips` clips of 16 snippets of
8 x 112 x 112 per chip), compiles ahead of time for a TPU (no TPU needed: libtpu's compiler runs on
this CPU) the forward and backward pass of a real `SwinBlock3d`'s x + DropPath(MLP(LayerNorm(x))) in
bfloat16 and training mode (stochastic depth on), once through XLA (attention "xla") and once through
`fused_mlp.residual_mlp` (attention "pallas"), and prints the compiler's estimated cycles and the HBM
bytes of each (`avcanet_jax.step_profile`; the kernel's cycles from its cost estimate, as `aot
--profile` models them). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import topologies

from avcanet_jax import aot, step_profile  # Importing aot sets libtpu's environment for a CPU machine.
from avcanet_jax.layers import BF16
from avcanet_jax.swin3d import SwinBlock3d, SwinConfig

# Swin-T's stages on one snippet of 8 x 112 x 112: (T', H', W', C), stage 4's map padded by patch merging.
STAGES = ((4, 28, 28, 96), (4, 14, 14, 192), (4, 7, 7, 384), (4, 4, 4, 768))


def compile_half(impl: str, shape, device) -> dict:
    """Cycles and HBM bytes of one block's LayerNorm, MLP and residual, forward and backward."""
    c = shape[-1]
    block = SwinBlock3d(c, c // 32, (0, 0, 0), 0.1, SwinConfig(attention=impl), nnx.Rngs(0), BF16)
    windows = block.windows(shape)
    graphdef, state = nnx.split(block)

    def step(state, rows, cotangent):
        def half(state, rows):
            return nnx.merge(graphdef, state)._mlp(rows, windows)

        out, vjp = jax.vjp(half, state, rows)
        return out, vjp(cotangent)

    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)  # noqa: E731
    rows = jax.ShapeDtypeStruct((shape[0] * shape[1] * shape[2] * shape[3], c), jnp.bfloat16, sharding=sharding)
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
        xla, fused = (compile_half(impl, shape, device) for impl in ("xla", "pallas"))
        results.append({"stage": stage, "rows": shape[0] * t * h * w, "C": c, "xla": xla, "fused": fused})
        print(
            f"stage {stage} (C={c}): XLA {xla['cycles'] / 1e6:.3f} M cycles, {xla['hbm_bytes'] / 1e6:.0f} MB; "
            f"fused {fused['cycles'] / 1e6:.3f} M cycles, {fused['hbm_bytes'] / 1e6:.0f} MB",
            flush=True,
        )
    print(json.dumps({"topology": args.topology, "clips_per_chip": args.clips, "stages": results}))


if __name__ == "__main__":
    main()

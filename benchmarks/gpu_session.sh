#!/usr/bin/env bash
# The GPU measurements behind the README's GPU rows, in one command for a machine with one NVIDIA GPU and
# JAX (CUDA), Flax, Optax, PyTorch and torchvision installed (the repository root as working directory):
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh [--batch 32] [--attention cudnn] [...]
#
# 1. cuDNN attention against the reference at Swin-T's stage-1 shapes (the GPU-only tests);
# 2. benchmarks/model_step.py --full: the trainer's step per attention, the Swin-T branch side by side
#    with torchvision's swin3d_t (eager, torch.compile), with a jax.profiler trace and the optimised HLO;
# 3. avcanet_jax.trace_profile: the traced kernels' time per model part, per attention.
# Logs, profiles and a tarball of the traces and HLO (for re-running step 3 elsewhere) go to $OUT.
# Extra arguments go to model_step.py. Each step has a time limit so that a slow one leaves the rest.
# Time: on an H200, model_step.py with two attentions and torchvision (eager and compiled) once took
# 5.5 minutes and once did not finish in 7 (MODEL_STEP_TIMEOUT, seconds, default 480), so the default
# is one attention; name more with `--attention cudnn,xla`.
set -u
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# JAX takes 75% of the GPU's memory by default; leave torchvision the other half in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
work=$(mktemp -d)
attentions=cudnn
args=(--full --batch 32 --bf16)
while (($#)); do
  if [[ $1 == --attention ]]; then attentions=$2 && shift 2; else args+=("$1") && shift; fi
done

nvidia-smi -L
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

timeout 180 python3 -m pytest --noconftest -o addopts= -p no:cacheprovider -q \
  tests/test_window_attention.py -k stage_1_shapes 2>&1 | tail -30 | tee "$OUT/parity.log"

XLA_FLAGS="--xla_dump_to=$work/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*(train|step).*" \
  timeout "${MODEL_STEP_TIMEOUT:-480}" python3 benchmarks/model_step.py "${args[@]}" --attention "$attentions" \
  --trace "$work/trace" 2>&1 | grep --line-buffered -v '^[WI][0-9]\{4\} ' | tee "$OUT/model_step.log"

for a in ${attentions//,/ }; do
  timeout 60 python3 -m avcanet_jax.trace_profile "$work/trace/$a" --hlo_dump "$work/hlo" --top 40 \
    >"$OUT/profile_$a.txt" 2>&1 && head -40 "$OUT/profile_$a.txt"
done
# The traces and the optimised train-step modules only (the dump also holds every small helper program).
(cd "$work" && tar czf "$OUT/trace_and_hlo.tgz" trace $(ls hlo/*train*after_optimizations.txt 2>/dev/null))
ls -la "$OUT"

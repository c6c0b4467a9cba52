#!/usr/bin/env bash
# Train on one machine with one or more GPUs: one process drives all its GPUs (the mesh spans them).
#
#   launch/gpu_node.sh --workdir=runs/emotions [--config=configs/base.py] [--gpus=0,1,2,3] \
#       [--install] [--dry-run] [-- --config.data.data_dir=DATA ...]
#
# --install first installs the project with CUDA-enabled JAX (jax[cuda12]) into .venv.
# --dry-run prints the exact commands instead of running them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CONFIG="configs/base.py" WORKDIR="" GPUS="" INSTALL=0 DRY_RUN=0
EXTRA=()
while (($#)); do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --gpus=*) GPUS="${1#*=}" ;;
    --install) INSTALL=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) print_help; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
check_extra "config workdir gpus install"
export DRY_RUN
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ -f "$CONFIG" || "$CONFIG" == *.py:* ]] || die "--config: no such file '$CONFIG'"
[[ -z "$GPUS" || "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus must be a comma-separated list of GPU indices, got '$GPUS'"

if ((INSTALL)); then
  run python3 -m venv .venv
  run .venv/bin/pip install -q -e . "jax[cuda12]"
fi
ENV=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9)  # Leave room for cuDNN workspaces.
[[ -n "$GPUS" ]] && ENV+=(CUDA_VISIBLE_DEVICES="$GPUS")
run "${ENV[@]}" .venv/bin/python -m avcanet_jax.main --distributed=off --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}"
end_dry_run

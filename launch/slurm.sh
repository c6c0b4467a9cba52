#!/usr/bin/env bash
# Train on several GPU nodes under SLURM: one process per node, each driving its node's GPUs;
# jax.distributed.initialize() reads the SLURM variables, so the processes find each other by themselves.
#
#   launch/slurm.sh --nodes=4 --gpus-per-node=8 --workdir=/shared/runs/emotions \
#       [--config=configs/base.py] [--partition=gpu] [--time=24:00:00] [--account=A] [--dry-run] [-- ARGS]
#
# Writes the batch script to <workdir>/slurm_job.sh and submits it with sbatch (--dry-run prints both).
# The workdir must be on storage every node sees; a resubmitted or requeued job resumes from its checkpoint.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES="" GPUS_PER_NODE="" WORKDIR="" CONFIG="configs/base.py" PARTITION="" TIME="24:00:00" ACCOUNT="" DRY_RUN=0
EXTRA=()
while (($#)); do
  case "$1" in
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS_PER_NODE="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) print_help; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
check_extra "nodes gpus-per-node workdir config partition time account"
export DRY_RUN
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$NODES'"
[[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$GPUS_PER_NODE'"
[[ -n "$WORKDIR" ]] || die "--workdir is required (on storage shared by all nodes)"
[[ "$TIME" =~ ^([0-9]+-)?[0-9]{1,2}(:[0-9]{2}){0,2}$ ]] || die "--time must be SLURM time like 24:00:00, got '$TIME'"
[[ -f "$CONFIG" || "$CONFIG" == *.py:* ]] || die "--config: no such file '$CONFIG'"

JOB="$WORKDIR/slurm_job.sh"
HEADER=(
  "#SBATCH --job-name=avcanet"
  "#SBATCH --nodes=$NODES"
  "#SBATCH --ntasks-per-node=1"
  "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  "#SBATCH --time=$TIME"
  "#SBATCH --requeue"
  "#SBATCH --signal=TERM@120"
  "#SBATCH --output=$WORKDIR/slurm-%j.out"
)
[[ -n "$PARTITION" ]] && HEADER+=("#SBATCH --partition=$PARTITION")
[[ -n "$ACCOUNT" ]] && HEADER+=("#SBATCH --account=$ACCOUNT")
SCRIPT="#!/usr/bin/env bash
$(printf '%s\n' "${HEADER[@]}")
# SIGTERM 120 s before the time limit makes the trainer save and exit; resubmitting this script (or
# SLURM requeueing a preempted job) resumes from the last checkpoint.
set -euo pipefail
cd $(quote_args "$PWD")
srun --kill-on-bad-exit=1 .venv/bin/python -m avcanet_jax.main --distributed=on $(quote_args --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")"

if [[ "$DRY_RUN" == 1 ]]; then
  echo "# $JOB"
  echo "$SCRIPT"
else
  mkdir -p "$WORKDIR"
  echo "$SCRIPT" > "$JOB"
fi
run sbatch "$JOB"
end_dry_run

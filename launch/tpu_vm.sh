#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, install the project identically on every worker, start the
# same training command on all workers, follow the logs, copy results to a bucket, delete the slice.
#
#   launch/tpu_vm.sh all --name=avc --zone=us-west4-a --accelerator=v5litepod-16 \
#       --repo=https://github.com/ORG/avcanet-jax --ref=COMMIT --workdir=gs://BUCKET/runs/emotions \
#       --config=configs/base.py -- --config.data.data_dir=gs://BUCKET/tensorflow_datasets
#   launch/tpu_vm.sh create|setup|train|logs|copy|delete ... [--dry-run]
#
# "all" is create + setup + train; training runs detached, so "copy" and "delete" come after it ends.
# --dry-run prints the exact gcloud commands instead of running them. Everything after "--" is passed
# to `python -m avcanet_jax.main`. The workers find each other through the TPU metadata, so the
# training command runs with --distributed=on.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  print_help
  echo
  echo "Options: --name --zone --accelerator --version --project --spot | --queued --repo --ref"
  echo "         --config --workdir --results (gs:// copy of the workdir, default: none) --dry-run"
  exit "${1:-0}"
}

ACTION="${1:-}"
[[ -n "$ACTION" ]] || usage 2
[[ "$ACTION" == -h || "$ACTION" == --help ]] && usage 0
shift
NAME="" ZONE="" ACCEL="" VERSION="" PROJECT="" MODE="on-demand" REPO="" REF="main"
CONFIG="configs/base.py" WORKDIR="" RESULTS="" DRY_RUN=0
EXTRA=()
while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --spot) MODE="spot" ;;
    --queued) MODE="queued" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --results=*) RESULTS="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
check_extra "name zone accelerator version project spot queued repo ref config workdir results"
export DRY_RUN

case "$ACTION" in
  create | setup | train | logs | copy | delete | all) ;;
  *) die "unknown action '$ACTION'; one of: create setup train logs copy delete all" ;;
esac
[[ "$NAME" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--name must be a lowercase TPU name, got '$NAME'"
[[ -n "$ZONE" ]] || die "--zone is required (e.g. us-west4-a)"
if [[ "$ACTION" == create || "$ACTION" == all ]]; then
  [[ "$ACCEL" =~ ^(v2|v3|v4|v5litepod|v5p|v6e)-[0-9]+$ ]] ||
    die "--accelerator must look like v5litepod-16, v4-32 or v5p-128, got '$ACCEL'"
  if [[ -z "$VERSION" ]]; then  # The TPU software version each generation needs.
    case "$ACCEL" in
      v5litepod-*) VERSION="v2-alpha-tpuv5-lite" ;;
      v5p-*) VERSION="v2-alpha-tpuv5" ;;
      v6e-*) VERSION="v2-alpha-tpuv6e" ;;
      *) VERSION="tpu-ubuntu2204-base" ;;
    esac
  fi
fi
if [[ "$ACTION" == setup || "$ACTION" == all ]]; then
  [[ -n "$REPO" ]] || die "--repo is required to install (a git URL the workers can clone)"
fi
if [[ "$ACTION" == train || "$ACTION" == all ]]; then
  [[ -n "$WORKDIR" ]] || die "--workdir is required to train (gs://... so that every worker sees it)"
  [[ "$WORKDIR" == gs://* ]] || echo "warning: --workdir '$WORKDIR' is not on GCS; workers will not share it" >&2
fi
[[ -z "$RESULTS" || "$RESULTS" == gs://* ]] || die "--results must be a gs:// path, got '$RESULTS'"
[[ "$ACTION" == all && "$MODE" == queued ]] &&
  die "with --queued: run 'create', wait until the queued resource is ACTIVE, then 'setup' and 'train'"

GCLOUD=(gcloud compute tpus)
COMMON=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project="$PROJECT")
SSH=("${GCLOUD[@]}" tpu-vm ssh "$NAME" "${COMMON[@]}")

create() {
  case "$MODE" in
    on-demand) run "${GCLOUD[@]}" tpu-vm create "$NAME" "${COMMON[@]}" --accelerator-type="$ACCEL" --version="$VERSION" ;;
    spot) run "${GCLOUD[@]}" tpu-vm create "$NAME" "${COMMON[@]}" --accelerator-type="$ACCEL" --version="$VERSION" --spot ;;
    queued)
      run "${GCLOUD[@]}" queued-resources create "$NAME-qr" "${COMMON[@]}" --node-id="$NAME" \
        --accelerator-type="$ACCEL" --runtime-version="$VERSION"
      echo "queued: wait until '${GCLOUD[*]} queued-resources describe $NAME-qr' says ACTIVE" >&2
      ;;
  esac
}

setup() {
  # The same commit on every worker, installed the same way (README's install with the tpu extra).
  local remote
  remote="set -e; [ -d avcanet-jax ] || git clone -q $(quote_args "$REPO") avcanet-jax; cd avcanet-jax;"
  remote+=" git fetch -q origin; git checkout -q $(quote_args "$REF"); python3 -m venv .venv;"
  remote+=" . .venv/bin/activate; pip install -q -e '.[tpu]'; git rev-parse HEAD"
  run "${SSH[@]}" --worker=all --command="$remote"
}

train() {
  local cmd
  cmd="python -m avcanet_jax.main --distributed=on $(quote_args --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")"
  run "${SSH[@]}" --worker=all \
    --command="cd avcanet-jax && . .venv/bin/activate && nohup $cmd > train.log 2>&1 < /dev/null &"
}

logs() {
  run "${SSH[@]}" --worker=0 --command="tail -n 200 -f avcanet-jax/train.log"
}

copy() {
  [[ -n "$RESULTS" ]] || die "--results=gs://... is required to copy"
  [[ -n "$WORKDIR" ]] || die "--workdir is required to copy"
  if [[ "$WORKDIR" == gs://* ]]; then
    run gcloud storage rsync --recursive "$WORKDIR" "$RESULTS"
  else
    run "${SSH[@]}" --worker=0 --command="gcloud storage rsync --recursive $(quote_args "$WORKDIR" "$RESULTS")"
  fi
}

delete() {
  if [[ "$MODE" == queued ]]; then
    run "${GCLOUD[@]}" queued-resources delete "$NAME-qr" "${COMMON[@]}" --force --quiet
  else
    run "${GCLOUD[@]}" tpu-vm delete "$NAME" "${COMMON[@]}" --quiet
  fi
}

case "$ACTION" in
  all)
    create
    setup
    train
    [[ "$DRY_RUN" == 1 ]] || echo "training started on every worker; follow it with: $0 logs --name=$NAME --zone=$ZONE" >&2
    ;;
  *) "$ACTION" ;;
esac
end_dry_run

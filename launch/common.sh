#!/usr/bin/env bash
# Shared helpers for the launch scripts: argument errors and dry-run execution.
# Sourced, not run.

# die MESSAGE: prints "<script>: MESSAGE" to stderr and exits 2 (a usage error).
die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# run CMD ARGS...: runs the command, or with DRY_RUN=1 prints it shell-quoted, one per line.
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
  else
    "$@"
  fi
}

# need_value FLAG VALUE: fails when a flag that takes a value got none.
need_value() {
  [[ -n "${2:-}" && "${2:0:2}" != "--" ]] || die "$1 needs a value"
}

# quote_args ARGS...: the arguments as one shell-quoted string, for a remote command line.
quote_args() {
  local quoted=""
  if (($#)); then
    printf -v quoted '%q ' "$@"
  fi
  echo "${quoted% }"
}

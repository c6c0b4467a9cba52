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

# print_help: the script's leading comment block (its usage), without the comment marks.
print_help() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# check_extra "OWN FLAGS": checks the arguments after "--" (global EXTRA), which go to the trainer. A
# --dry-run there is the user's intent for this launcher, so it is honoured (and removed); any other flag
# of this launcher there is refused, as the trainer would get it instead.
check_extra() {
  local own=" $1 " arg name kept=()
  for arg in "${EXTRA[@]}"; do
    name="${arg%%=*}"
    if [[ "$arg" == --dry-run ]]; then
      DRY_RUN=1
      echo "$(basename "$0"): --dry-run after '--' taken as this launcher's: nothing will run" >&2
      continue
    fi
    [[ "$own" == *" ${name#--} "* ]] && die "$name after '--' would go to the trainer; give it before '--'"
    kept+=("$arg")
  done
  EXTRA=("${kept[@]}")
}

# end_dry_run: says that a dry run ran nothing (on stderr, so that stdout holds only the commands).
end_dry_run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "$(basename "$0"): dry run: the commands above were printed, nothing was run" >&2
  fi
}

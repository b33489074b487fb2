#!/usr/bin/env bash
# Run `molecule test -s <scenario>` for every scenario under molecule/, one after another; print
# each one's duration and fail if any failed. SKIP_SCENARIOS="a b" (spaces or commas) skips some.
# Usage: scripts/molecule-all.sh [scenario ...]   (default: every molecule/*/molecule.yml)
set -uo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"

current=""  # the scenario running now; the traps destroy what it made if this script stops
child=""    # its `molecule test`, in a process group of its own so a stop reaches ansible too
destroy_current() {
  if [[ -n "$current" ]]; then
    echo "molecule-all: destroying what scenario $current made" >&2
    molecule destroy -s "$current" >/dev/null 2>&1 || true
    current=""
  fi
}
stop() {
  if [[ -n "$child" ]]; then
    kill -TERM -- "-$child" 2>/dev/null
    wait "$child" 2>/dev/null
  fi
  destroy_current
  exit 130
}
trap destroy_current EXIT
trap stop INT TERM

scripts/build-lab-image.sh || exit 1  # a cached no-op when the image matches its recipe

if (($#)); then
  scenarios=("$@")
else
  scenarios=()
  for file in molecule/*/molecule.yml; do
    [[ -e "$file" ]] && scenarios+=("$(basename "$(dirname "$file")")")
  done
fi
skip="${SKIP_SCENARIOS:-}"
skip=" ${skip//,/ } "

results=() failed=0
for scenario in "${scenarios[@]}"; do
  if [[ "$skip" == *" $scenario "* ]]; then
    results+=("$(printf '%-24s %-8s %s' "$scenario" skipped -)")
    continue
  fi
  echo "molecule-all: === $scenario ===" >&2
  current="$scenario"
  start=$(date +%s.%N)
  setsid molecule test -s "$scenario" &
  child=$!
  wait "$child"
  rc=$?
  child=""
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }')
  if ((rc == 0)); then
    current=""  # molecule's own destroy step already removed its containers
    results+=("$(printf '%-24s %-8s %s' "$scenario" passed "$seconds")")
  else
    destroy_current  # molecule destroys on failure too; this also covers a crash of molecule
    results+=("$(printf '%-24s %-8s %s' "$scenario" FAILED "$seconds")")
    failed=1
  fi
done

printf '\n%-24s %-8s %s\n' scenario result duration
printf '%s\n' "${results[@]}"
exit "$failed"

#!/usr/bin/env bash
# Run `molecule test -s <scenario>` for every scenario under molecule/, MOLECULE_JOBS at a time
# (default 3: every scenario at once); print each one's log when it ends, then a table of their
# durations, and fail if any failed. SKIP_SCENARIOS="a b" (spaces or commas) skips some.
# Usage: scripts/molecule-all.sh [scenario ...]   (default: every molecule/*/molecule.yml)
#
# Parallel because a scenario waits far more than it computes: the podman connection runs
# several `podman exec` per task (it cannot pipeline). Scenarios share nothing: each names its
# containers after itself and keeps its control-node files (its CA) in its own ephemeral
# directory.
set -uo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
jobs_max="${MOLECULE_JOBS:-3}"
logs=build/molecule
mkdir -p "$logs"

declare -A pid_of=() start_of=()  # the scenarios running now: their `molecule test` and start
results=() failed=0

# A stop (or this script failing) takes down every running scenario's process group, then
# destroys what each made.
stop_all() {
  local scenario
  for scenario in "${!pid_of[@]}"; do
    kill -TERM -- "-${pid_of[$scenario]}" 2>/dev/null
  done
  for scenario in "${!pid_of[@]}"; do
    wait "${pid_of[$scenario]}" 2>/dev/null
    echo "molecule-all: destroying what scenario $scenario made" >&2
    molecule destroy -s "$scenario" >/dev/null 2>&1 || true
    unset "pid_of[$scenario]"
  done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

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

# Collect one scenario that ended: its log, its row, and a destroy if it failed (molecule
# destroys on failure too; this also covers a crash of molecule itself).
reap() {
  local done_pid scenario rc seconds
  wait -n -p done_pid "${pid_of[@]}"
  rc=$?
  for scenario in "${!pid_of[@]}"; do
    [[ "${pid_of[$scenario]}" == "$done_pid" ]] || continue
    unset "pid_of[$scenario]"
    seconds=$(awk -v a="${start_of[$scenario]}" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }')
    echo "molecule-all: === $scenario ($seconds, exit $rc; $logs/$scenario.log) ===" >&2
    cat "$logs/$scenario.log"
    if ((rc == 0)); then
      results+=("$(printf '%-24s %-8s %s' "$scenario" passed "$seconds")")
    else
      molecule destroy -s "$scenario" >/dev/null 2>&1 || true
      results+=("$(printf '%-24s %-8s %s' "$scenario" FAILED "$seconds")")
      failed=1
    fi
  done
}

for scenario in "${scenarios[@]}"; do
  if [[ "$skip" == *" $scenario "* ]]; then
    results+=("$(printf '%-24s %-8s %s' "$scenario" skipped -)")
    continue
  fi
  while ((${#pid_of[@]} >= jobs_max)); do reap; done
  echo "molecule-all: starting $scenario" >&2
  start_of[$scenario]=$EPOCHREALTIME
  # Its own process group, so a stop reaches ansible and the verifier too.
  setsid molecule test -s "$scenario" >"$logs/$scenario.log" 2>&1 &
  pid_of[$scenario]=$!
done
while ((${#pid_of[@]})); do reap; done

printf '\n%-24s %-8s %s\n' scenario result duration
printf '%s\n' "${results[@]}"
exit "$failed"

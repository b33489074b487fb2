#!/usr/bin/env bash
# End to end: a fresh lab (scripts/lab.sh down, then up), tests/e2e against it, and the lab
# removed again whatever happened. Exits with pytest's status (lab.sh's when the lab does not
# come up). Extra arguments go to pytest, e.g. `scripts/e2e.sh -k failover`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
export PATH="$PWD/.venv/bin:$PATH"

stamp() { echo "$EPOCHREALTIME"; }
took() { awk -v label="$1" -v start="$2" -v now="$(stamp)" 'BEGIN { printf "%s %.1f s\n", label, now - start }'; }

t0=$(stamp)
# The EXIT trap also runs on INT/TERM once they are turned into an exit.
trap 'scripts/lab.sh down; took "e2e: total" "$t0"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A lab left by an earlier run may hold a revoked test device: start from nothing.
scripts/lab.sh down
scripts/lab.sh up

mkdir -p build/e2e
t=$(stamp)
status=0
pytest tests/e2e -v -s -p no:cacheprovider -o junit_family=xunit1 --junitxml=build/e2e/junit.xml "$@" || status=$?
took "e2e: tests" "$t"
exit "$status"

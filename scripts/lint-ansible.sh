#!/usr/bin/env bash
# ansible-lint (settings in .ansible-lint, profile production) over the roles, the playbooks and
# the molecule scenarios. Folders that do not exist yet or hold no YAML are left out, so an
# empty playbooks/ does not fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="${ANSIBLE_CONFIG:-$PWD/ansible.cfg}"

targets=()
for dir in roles playbooks molecule .config/molecule; do
  if [[ -d "$dir" ]] && find "$dir" -name '*.yml' -print -quit | grep -q .; then
    targets+=("$dir")
  fi
done
if ((${#targets[@]} == 0)); then
  echo "lint-ansible: nothing to lint"
  exit 0
fi
exec ansible-lint --nocolor "${targets[@]}"

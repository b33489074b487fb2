#!/usr/bin/env bash
# The one-machine lab. `scripts/lab.sh up` builds the image if needed, starts the containers,
# runs the production playbooks against inventory/lab and prints the fleet table;
# `scripts/lab.sh down` removes every container and the network the lab made, and the
# containers' host keys (each new container makes its own).
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
export PATH="$PWD/.venv/bin:$PATH"
LAB_LABEL=io.iotistic-vpn.lab=true
LAB_NETWORK=iotistic-lab

stamp() { echo "$EPOCHREALTIME"; }
took() { awk -v label="$1" -v start="$2" -v now="$(stamp)" 'BEGIN { printf "%s %.1f s\n", label, now - start }'; }

up() {
  local t0 t
  t0=$(stamp)
  t=$(stamp); scripts/build-lab-image.sh; took "lab: image" "$t"
  t=$(stamp); ansible-playbook -i inventory/lab playbooks/lab_up.yml; took "lab: containers" "$t"
  t=$(stamp); ansible-playbook -i inventory/lab playbooks/site.yml; took "lab: converge" "$t"
  t=$(stamp); python scripts/lab_status.py --wait 60; took "lab: tunnels and table" "$t"
  took "lab: total" "$t0"
}

down() {
  local ids
  ids=$(podman ps -aq --filter "label=$LAB_LABEL")
  [[ -n "$ids" ]] && podman rm -f -t 2 $ids >/dev/null
  podman network exists "$LAB_NETWORK" && podman network rm "$LAB_NETWORK" >/dev/null
  # The SSH masters of the removed containers end by themselves (ServerAliveInterval).
  rm -rf build/lab/known_hosts build/lab/cm
  echo "lab: removed"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) python scripts/lab_status.py ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

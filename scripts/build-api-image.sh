#!/usr/bin/env bash
# Build the cloud API's image (localhost/iotistic-vpn-api:lab) from images/api/Containerfile,
# FROM the lab's base image (scripts/build-lab-image.sh builds it first). Nothing is pulled: the
# API's dependencies are the wheels of constraints.txt, downloaded on this host into
# build/wheels (pip's cache makes a second download free) and installed offline in the image.
# Skipped when the image exists and its label records the same input hash: the Containerfile,
# the start scripts, the wheels' names and versions, the iotistic_vpn package's files and the
# base image's id.
# Usage: scripts/build-api-image.sh [--force]      API_IMAGE=... overrides the tag;
# API_PACKAGE_ROOT=DIR takes the package from DIR/iotistic_vpn instead of python_plugins/
# (scripts/lab.sh gives it the lab's snapshot).
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"

IMAGE="${API_IMAGE:-localhost/iotistic-vpn-api:lab}"
BASE="${LAB_IMAGE:-localhost/lab-base:12}"
LABEL=io.iotistic-vpn.inputs
PYTHON="$PWD/.venv/bin/python"
WHEELS="$PWD/build/wheels"
PACKAGE_ROOT="${API_PACKAGE_ROOT:-python_plugins}"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf 'build-api-image: %s\n' "$*" >&2; }
context=""  # the temp build context; global so the EXIT trap can remove it

# name==version of every distribution the package's runtime dependencies (pyproject.toml's
# [project] dependencies, with their extras, transitively, and EXTRA_REQUIREMENTS) need on
# Python 3.11 on Linux, at the versions installed in .venv, which constraints.txt pins. pip is
# added: it installs the rest.
# jinja2: the dashboard's templates (starlette's Jinja2Templates imports it), which
# pyproject.toml does not list yet; harmless once it does.
EXTRA_REQUIREMENTS="jinja2"
requirements() {
  EXTRA_REQUIREMENTS="$EXTRA_REQUIREMENTS" "$PYTHON" - <<'PY'
import os
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

with open("pyproject.toml", "rb") as f:
    wanted = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
wanted += [Requirement(r) for r in os.environ["EXTRA_REQUIREMENTS"].split()]
seen: dict[str, str] = {}
while wanted:
    req = wanted.pop()
    name = canonicalize_name(req.name)
    try:
        dist = distribution(req.name)
    except PackageNotFoundError:
        raise SystemExit(f"{req.name} is not installed in .venv: run make venv") from None
    for extra in [*req.extras, ""]:
        for sub in dist.requires or []:
            r = Requirement(sub)
            env = {"extra": extra, "python_version": "3.11", "sys_platform": "linux",
                   "platform_system": "Linux", "implementation_name": "cpython"}
            if (r.marker is None or r.marker.evaluate(env)) and canonicalize_name(r.name) not in seen:
                wanted.append(r)
    seen[name] = dist.version
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))
print(f"pip=={distribution('pip').version}")
PY
}

# The package as the image gets it: every file but compiled ones, in a stable order.
package_files() {
  (cd "$PACKAGE_ROOT" && find iotistic_vpn -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z)
}

input_hash() {
  local base_id="$1" reqs="$2"
  {
    printf '%s\n' "$base_id" "$reqs"
    sha256sum images/api/Containerfile images/api/iotistic-vpn images/api/iotistic-api-start
    package_files | (cd "$PACKAGE_ROOT" && xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}

main() {
  local force=0 start t base_id reqs hash current old_id
  [[ "${1:-}" == "--force" ]] && force=1
  start=$(now)
  mkdir -p build
  exec 9>build/.api-image.lock
  flock 9
  scripts/build-lab-image.sh
  base_id=$(podman image inspect --format '{{ .Id }}' "$BASE")
  reqs=$(requirements)
  hash=$(input_hash "$base_id" "$reqs")
  current=$(podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
  if ((!force)) && [[ "$current" == "$hash" ]]; then
    log "$IMAGE is up to date (inputs $hash): cached, $(elapsed "$start") s"
    return 0
  fi
  log "building $IMAGE (inputs $hash, was ${current:-absent})"

  t=$(now)
  mkdir -p "$WHEELS"
  # Binary wheels only, for this interpreter and platform (the image's python3 is 3.11 too):
  # nothing is compiled, and constraints.txt must agree with every version asked for.
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -c constraints.txt -d "$WHEELS" $reqs 2> >(grep -v "^WARNING: Location .* is ignored" >&2)
  log "wheels: $(elapsed "$t") s"

  context=$(mktemp -d "$PWD/build/api-image.XXXXXX")
  trap 'rm -rf "$context"' EXIT
  mkdir -p "$context/wheels/pip"
  local req name version file
  for req in $reqs; do
    name=${req%%==*} version=${req#*==}
    # A wheel's file name spells the distribution with underscores, in any case.
    file=$(find "$WHEELS" -maxdepth 1 -iname "$(echo "$name" | tr '-' '_')-${version}-*.whl" | head -n1)
    [[ -n "$file" ]] || { log "no wheel for $req in $WHEELS"; return 1; }
    if [[ "$name" == pip ]]; then
      cp "$file" "$context/wheels/pip/"
    else
      cp "$file" "$context/wheels/"
    fi
  done
  package_files | tar -C "$PACKAGE_ROOT" --null -T - -c | tar -C "$context" -x
  cp images/api/iotistic-vpn images/api/iotistic-api-start "$context/"

  t=$(now)
  old_id=$(podman image inspect --format '{{ .Id }}' "$IMAGE" 2>/dev/null || true)
  # --no-cache: the input hash above decides when to build; podman's layer cache would not see
  # a changed wheel behind the RUN's bind mount.
  podman build --quiet --no-cache --pull=never --network=none --build-arg "BASE_IMAGE=$BASE" \
    --label "$LABEL=$hash" -f images/api/Containerfile -t "$IMAGE" "$context" >/dev/null
  log "podman build: $(elapsed "$t") s"
  if [[ -n "$old_id" && "$old_id" != "$(podman image inspect --format '{{ .Id }}' "$IMAGE")" ]]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true
  fi
  log "built $IMAGE ($(podman image inspect --format '{{ .Size }}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }')) in $(elapsed "$start") s"
}

main "$@"

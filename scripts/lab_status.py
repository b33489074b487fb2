"""Print the lab fleet: customer, device, VPN address, gateway, state, and the agent's answer.

The registry says where each device is; the answer is a real HTTP request to the device's agent
API on :48484, made the only way there is: through the cloud API in lab-api (an operator's
read-only token, kept 0600 in build/lab/api-token-status), the tunnel service of the gateway
that holds the device and its tunnel. A process on a gateway cannot open one itself: the
gateway's firewall lets only the tunnel service's marked sockets out to devices.
  .venv/bin/python scripts/lab_status.py [--wait SECONDS]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python_plugins"))

from iotistic_vpn.errors import RegistryUnavailable  # noqa: E402
from iotistic_vpn.registry import Device, Registry, conninfo  # noqa: E402

NETWORK = "iotistic-lab"
API = "lab-api"
API_PORT = 8000  # conventions.API_CONTAINER_PORT, as roles/cloud_api runs it
STATUS_TOKEN = REPO / "build/lab/api-token-status"  # removed by `scripts/lab.sh down`


def lab_address(name: str) -> str:
    """A lab container's address on the lab network (this machine routes to it)."""
    return subprocess.run(
        ["podman", "inspect", name, "--format",
         f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def registry_dsn() -> str:
    """The lab registry's DSN: its container address and the password the lab made."""
    address = lab_address("lab-registry")
    password = (REPO / "build/lab/registry_password").read_text().split()[0]
    return conninfo(host=address, port=5432, user="iotistic_vpn", password=password,
                    dbname="iotistic_vpn")  # fmt: skip


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """Plain columns, two spaces apart, a rule under the headers: readable in any log."""
    cells = [[str("-" if v is None else v) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def status_token(reg: Registry) -> str:
    """The table's operator token (read-only, the agent port only): the one kept in
    build/lab/api-token-status while it is live, else a new one, written there 0600."""
    if STATUS_TOKEN.exists():
        value = STATUS_TOKEN.read_text().strip()
        if reg.authenticate(value) is not None:
            return value
    _, issued = reg.ensure_token(
        f"lab-status-{uuid.uuid4().hex[:8]}", customer_id=None, actor="lab_status", read_only=True
    )
    assert issued is not None  # a new name: the token is shown now
    STATUS_TOKEN.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATUS_TOKEN, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(issued.value + "\n")
    return issued.value


def agent_answer(api: httpx.Client, device: Device) -> str:
    """Ask the device's agent through the cloud API (and the gateway that holds its tunnel)."""
    if not device.connected or not device.gateway:
        return "-"
    try:
        answer = api.get(f"/v1/devices/{device.id}/proxy/v1/device")
    except httpx.HTTPError as exc:
        return f"error: {exc}"
    if answer.status_code != 200:
        return f"error: {answer.status_code} {answer.text[:60]}"
    try:
        body = answer.json()
    except ValueError:
        return f"error: not JSON: {answer.text[:40]!r}"
    return f"{body.get('device_id')} {body.get('status')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for every tunnel")
    args = parser.parse_args()
    deadline = time.monotonic() + args.wait
    try:
        with Registry(registry_dsn(), connect_timeout=5) as reg:
            while True:
                devices = reg.list_devices()
                waiting = [d for d in devices if d.state != "revoked" and not d.connected]
                if not waiting or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            token = status_token(reg)
        api_url = f"http://{lab_address(API)}:{API_PORT}"
    except (RegistryUnavailable, subprocess.CalledProcessError, OSError) as exc:
        print(f"lab: cannot read the registry: {exc}", file=sys.stderr)
        return 1
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=10) as api:
        rows = [
            [d.customer_id, d.id, d.vpn_address, d.gateway, d.state, agent_answer(api, d)]
            for d in sorted(devices, key=lambda d: (d.customer_id, d.id))
        ]
    print(format_table(["CUSTOMER", "DEVICE", "VPN ADDRESS", "GATEWAY", "STATE", "AGENT"], rows))
    if waiting:
        print(f"lab: {len(waiting)} device(s) not connected: {', '.join(d.id for d in waiting)}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

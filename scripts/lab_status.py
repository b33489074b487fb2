"""Print the lab fleet: customer, device, VPN address, gateway, state, and the agent's answer.

The registry says where each device is; the answer is a real HTTP request made from that
gateway through the device's tunnel to its agent API on :48484.
  .venv/bin/python scripts/lab_status.py [--wait SECONDS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python_plugins"))

from iotistic_vpn.errors import RegistryUnavailable  # noqa: E402
from iotistic_vpn.registry import Device, Registry, conninfo  # noqa: E402

NETWORK = "iotistic-lab"


def registry_dsn() -> str:
    """The lab registry's DSN: its container address and the password the lab made."""
    address = subprocess.run(
        ["podman", "inspect", "lab-registry", "--format",
         f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
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


def agent_answer(device: Device) -> str:
    """Ask the device's agent, from the gateway that holds its tunnel."""
    if not device.connected or not device.gateway:
        return "-"
    proc = subprocess.run(
        ["podman", "exec", device.gateway, "curl", "-sS", "--max-time", "3",
         f"http://{device.vpn_address}:48484/v1/device"],
        capture_output=True, text=True, check=False, timeout=20,
    )  # fmt: skip
    if proc.returncode != 0:
        return f"error: {proc.stderr.strip() or proc.returncode}"
    try:
        body = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return f"error: not JSON: {proc.stdout[:40]!r}"
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
    except (RegistryUnavailable, subprocess.CalledProcessError, OSError) as exc:
        print(f"lab: cannot read the registry: {exc}", file=sys.stderr)
        return 1
    rows = [
        [d.customer_id, d.id, d.vpn_address, d.gateway, d.state, agent_answer(d)]
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

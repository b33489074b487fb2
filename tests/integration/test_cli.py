"""The operator CLI against the real registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iotistic_vpn.cli import format_table
from iotistic_vpn.registry import Registry

pytestmark = pytest.mark.postgres
CLI = str(Path(sys.executable).with_name("iotistic-vpn"))


def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--dsn", dsn, *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_devices_table_and_json(registry_dsn):
    with Registry(registry_dsn) as reg:
        for customer in ("acme", "globex"):
            reg.ensure_customer(customer, actor="test")
        reg.provision_devices("acme", ["pump-1", "pump-2"], actor="test")
        reg.provision_devices("globex", ["meter-1"], actor="test")
        reg.revoke_device("acme", "pump-2", actor="test")

    table = _cli("devices", dsn=registry_dsn)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "CUSTOMER  DEVICE   VPN ADDRESS  GATEWAY  STATE        CONNECTED",
        "acme      pump-1   100.64.0.2   -        provisioned  no",
        "acme      pump-2   100.64.0.3   -        revoked      no",
        "globex    meter-1  100.64.16.2  -        provisioned  no",
    ]
    only = json.loads(_cli("devices", "--customer", "globex", "--json", dsn=registry_dsn).stdout)
    assert [(d["id"], d["vpn_address"]) for d in only] == [("meter-1", "100.64.16.2")]


def test_registry_down_is_one_clear_line(pg_server, registry_dsn):
    pg_server.stop()
    try:
        run = _cli("devices", dsn=registry_dsn)
    finally:
        pg_server.start()
    assert run.returncode == 1
    assert run.stderr.startswith("iotistic-vpn: registry database ")
    assert "is unavailable" in run.stderr and pg_server.password not in run.stderr
    assert "Traceback" not in run.stderr


def test_format_table_pads_columns_and_marks_missing_values():
    assert format_table(["A", "LONG"], [["xyz", None]]).splitlines() == ["A    LONG", "xyz  -"]

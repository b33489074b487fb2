"""The iotistic_vpn_registry inventory plugin through the real ansible-inventory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from iotistic_vpn.registry import Registry
from tests.support.ansible_run import REPO

pytestmark = [pytest.mark.ansible, pytest.mark.postgres]


def _inventory(source: Path, *args: str, env: dict[str, str] | None = None):
    cmd = [str(Path(sys.executable).with_name("ansible-inventory")), "-i", str(source), *args]
    full_env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), **(env or {})}
    return subprocess.run(
        cmd, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=120, check=False
    )


def _source(tmp_path: Path, **options) -> Path:
    path = tmp_path / "fleet.iotistic_vpn.yml"
    path.write_text(yaml.safe_dump({"plugin": "iotistic_vpn_registry", **options}))
    return path


@pytest.fixture
def fleet(registry_dsn):
    """Two customers; one device connected through gw-1, one revoked."""
    with Registry(registry_dsn) as reg:
        reg.ensure_customer("acme", actor="t")
        reg.ensure_customer("globex-eu", actor="t")
        reg.provision_devices("acme", ["pump-1", "pump-2"], actor="t")
        reg.provision_devices("globex-eu", ["gate-1", "gate-2"], actor="t")
        reg.record_connect("pump-1", "gw-1")
        reg.revoke_device("globex-eu", "gate-2", actor="t")
    return registry_dsn


def _graph(text: str) -> dict[str, list[str]]:
    """ansible-inventory --graph output as {group: [hosts]}."""
    groups: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        name = line.strip(" |-")
        if name.startswith("@"):
            current = name[1:].rstrip(":")
            groups[current] = []
        elif name:
            groups[current].append(name)
    return groups


def test_graph_groups_devices_by_customer_state_and_gateway(fleet, tmp_path):
    proc = _inventory(_source(tmp_path, dsn=fleet), "--graph")
    assert proc.returncode == 0, proc.stderr
    assert _graph(proc.stdout) == {
        "all": [],
        "ungrouped": [],
        "devices": ["gate-1", "pump-1", "pump-2"],
        "customer_acme": ["pump-1", "pump-2"],
        "customer_globex_eu": ["gate-1"],
        "state_active": ["pump-1"],
        "state_provisioned": ["gate-1", "pump-2"],
        "gateway_gw_1": ["pump-1"],
    }


def _unsafe(value):
    return value["__ansible_unsafe"] if isinstance(value, dict) else value


def test_list_sets_ansible_host_to_the_vpn_address(fleet, tmp_path):
    source = _source(
        tmp_path,
        dsn=fleet,
        customers=["acme"],
        compose={"agent_url": "'http://' ~ vpn_address ~ ':48484'"},
        keyed_groups=[{"key": "connected | ternary('online', 'offline')", "prefix": "tunnel"}],
    )
    proc = _inventory(source, "--list")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    # Registry values are data, never templates: ansible-inventory marks them unsafe.
    pump1 = {k: _unsafe(v) for k, v in data["_meta"]["hostvars"]["pump-1"].items()}
    assert {k: v for k, v in pump1.items() if k != "last_seen"} == {
        "ansible_host": "100.64.0.2",
        "vpn_address": "100.64.0.2",
        "customer": "acme",
        "state": "active",
        "gateway": "gw-1",
        "connected": True,
        "agent_url": "http://100.64.0.2:48484",
    }
    assert pump1["last_seen"].startswith("20")
    assert sorted(data["_meta"]["hostvars"]) == ["pump-1", "pump-2"]
    assert data["tunnel_online"]["hosts"] == ["pump-1"]
    assert data["tunnel_offline"]["hosts"] == ["pump-2"]


def test_login_options_and_cache(fleet, pg_server, tmp_path):
    source = _source(
        tmp_path,
        login_host=pg_server.host,
        login_port=pg_server.port,
        login_user=pg_server.user,
        db=fleet.split("dbname=")[1].split()[0],
        cache=True,
        cache_plugin="ansible.builtin.jsonfile",
        cache_connection=str(tmp_path / "cache"),
        cache_timeout=600,
    )
    env = {"IOTISTIC_VPN_REGISTRY_PASSWORD": pg_server.password}
    first = _inventory(source, "--graph", "devices", env=env)
    assert first.returncode == 0, first.stderr
    assert _graph(first.stdout) == {"devices": ["gate-1", "pump-1", "pump-2"]}
    with Registry(fleet) as reg:
        reg.provision_device("acme", "pump-3", actor="t")
    cached = _inventory(source, "--graph", "devices", env=env)
    assert "pump-3" not in cached.stdout  # served from the cache
    fresh = _inventory(source, "--graph", "devices", "--flush-cache", env=env)
    assert "pump-3" in fresh.stdout


def test_database_down_names_the_source(pg_server, tmp_path):
    dsn = f"host=127.0.0.1 port={pg_server.port + 1} user=postgres password=pw dbname=x"
    source = _source(tmp_path, dsn=dsn, connect_timeout=2)
    proc = _inventory(source, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    assert proc.returncode != 0
    message = " ".join(proc.stderr.split())
    assert f"{source}: registry database postgres@127.0.0.1:{pg_server.port + 1}/x" in message
    assert "is unavailable" in message
    assert "password=pw" not in message


def test_only_its_own_files_are_read(tmp_path):
    other = tmp_path / "hosts.yml"
    other.write_text("plugin: iotistic_vpn_registry\n")
    proc = _inventory(other, "--list", env={"ANSIBLE_INVENTORY_ENABLED": "iotistic_vpn_registry"})
    assert f"Unable to parse {other} as an inventory source" in proc.stderr
    assert json.loads(proc.stdout)["_meta"]["hostvars"] == {}

"""The operator CLI (`iotistic-vpn`, the installed entry point) against the real registry."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iotistic_vpn import pki
from iotistic_vpn.registry import Registry

pytestmark = pytest.mark.postgres
CLI = str(Path(sys.executable).with_name("iotistic-vpn"))


def _cli(*args: str, dsn: str = "", env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--dsn", dsn, *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env)  # fmt: skip


def _json(*args: str, dsn: str = ""):
    run = _cli("--json", *args, dsn=dsn)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture
def fleet(registry_dsn):
    with Registry(registry_dsn) as reg:
        for customer in ("acme", "globex"):
            reg.ensure_customer(customer, actor="test")
        reg.provision_devices("acme", ["pump-1", "pump-2"], actor="test")
        reg.provision_devices("globex", ["meter-1"], actor="test")
    return registry_dsn


def test_devices_table_and_json(fleet):
    table = _cli("devices", dsn=fleet)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CUSTOMER", "DEVICE", "VPN", "ADDRESS", "GATEWAY", "STATE",
                                "ONLINE", "LAST", "SEEN", "CERT", "EXPIRES"]  # fmt: skip
    body = [line.split() for line in lines[2:] if line.strip()]
    assert [(r[0], r[1], r[2], r[4]) for r in body] == [
        ("acme", "pump-1", "100.64.0.2", "provisioned"),
        ("acme", "pump-2", "100.64.0.3", "provisioned"),
        ("globex", "meter-1", "100.64.16.2", "provisioned"),
    ]
    only = _json("devices", "list", "--customer", "globex", dsn=fleet)
    assert [(d["id"], d["vpn_address"], d["connected"]) for d in only] == [
        ("meter-1", "100.64.16.2", False)
    ]
    assert _json("devices", "list", "--online", dsn=fleet) == []


def test_customers_revoke_and_show(fleet):
    added = _json("customers", "add", "initech", "--name", "Initech", dsn=fleet)
    assert added[0]["block"] == "100.64.32.0/20" and added[0]["changed"] is True
    assert _json("customers", "add", "initech", dsn=fleet)[0]["changed"] is False
    assert [c["id"] for c in _json("customers", "list", dsn=fleet)] == ["acme", "globex", "initech"]
    revoked = _json("devices", "revoke", "pump-2", "meter-1", "--reason", "key_compromise",
                    dsn=fleet)  # fmt: skip
    assert {r["target"] for r in revoked} == {"device:pump-2", "device:meter-1"}
    shown = _json("devices", "show", "pump-2", dsn=fleet)
    assert (shown["state"], shown["certificates"]) == ("revoked", [])
    missing = _cli("devices", "show", "nosuch", dsn=fleet)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "iotistic-vpn: device 'nosuch' not found"


def test_tokens_create_list_revoke_and_the_audit_trail(fleet):
    created = _json("tokens", "create", "dash", "--customer", "acme", "--device", "pump-1",
                    "--port", "48484", "--port", "22", dsn=fleet)  # fmt: skip
    value = created["token"]
    with Registry(fleet) as reg:
        token = reg.authenticate(value)
    assert token.devices == ("pump-1",) and token.ports == (22, 48484) and token.read_only
    again = _cli("tokens", "create", "dash", "--customer", "acme", "--device", "pump-1",
                 "--port", "48484", "--port", "22", dsn=fleet)  # fmt: skip
    assert again.returncode == 1 and "exists already" in again.stderr
    listed = _json("tokens", "list", "--customer", "acme", dsn=fleet)
    assert [t["name"] for t in listed] == ["dash"] and "token" not in listed[0]
    assert value not in _cli("tokens", "list", dsn=fleet).stdout
    assert _json("tokens", "revoke", created["id"], dsn=fleet)[0]["changed"] is True
    with Registry(fleet) as reg:
        assert reg.authenticate(value) is None
    trail = _json("audit", "--customer", "acme", dsn=fleet)
    assert [e["action"] for e in trail][-2:] == ["token.create", "token.revoke"]
    assert all(value not in json.dumps(e) for e in trail)


def test_provisioning_tokens_create_list_revoke(fleet):
    created = _json("provisioning-tokens", "create", "acme", "factory", "--max-uses", "3",
                    "--devices", "pump-*", "--days", "2", dsn=fleet)  # fmt: skip
    value = created["token"]
    assert value.startswith(f"ivpp_{created['id']}_")
    with Registry(fleet) as reg:
        token, now = reg.provisioning_token(value)
    assert (token.max_uses, token.device_pattern, token.usable(now)) == (3, "pump-*", True)
    assert dt.timedelta(days=1) < token.expires_at - now <= dt.timedelta(days=2)
    again = _cli("provisioning-tokens", "create", "acme", "factory", "--max-uses", "3",
                 "--devices", "pump-*", dsn=fleet)  # fmt: skip
    assert again.returncode == 1 and "another scope" in again.stderr
    bad = _cli("provisioning-tokens", "create", "acme", "x", "--devices", "pump-[1]", dsn=fleet)
    assert bad.returncode == 1 and "invalid device pattern 'pump-[1]'" in bad.stderr
    listed = _cli("provisioning-tokens", "list", "--customer", "acme", dsn=fleet)
    assert "factory" in listed.stdout and value not in listed.stdout
    assert _json("provisioning-tokens", "revoke", created["id"], dsn=fleet)[0]["changed"]
    assert _json("provisioning-tokens", "list", dsn=fleet) == []
    trail = _json("audit", "--customer", "acme", dsn=fleet)
    assert [e["action"] for e in trail][-2:] == [
        "provisioning_token.create", "provisioning_token.revoke",
    ]  # fmt: skip


def test_audit_follow_prints_what_comes_after(fleet):
    follow = subprocess.Popen(
        [CLI, "--dsn", fleet, "--json", "audit", "--device", "pump-1", "--follow",
         "--interval", "0.2", "--max-polls", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    import time

    time.sleep(1.0)
    with Registry(fleet) as reg:
        reg.revoke_device("acme", "pump-1", actor="later")
    out, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err
    batches = [json.loads(chunk) for chunk in out.replace("]\n[", "]\x00[").split("\x00")]
    assert [e["action"] for e in batches[0]] == ["device.provision"]
    assert [e["action"] for b in batches[1:] for e in b] == ["device.revoke"]


def test_ca_and_crl_status_exit_1_inside_the_warning_window(tmp_path):
    ca_dir = tmp_path / "ca"
    ca = pki.ensure_ca(pki.CaFiles.at(ca_dir)).ca
    crl = tmp_path / "crl.pem"
    pki.ensure_crl(
        ca,
        crl,
        [pki.Revocation(12)],
        next_update=dt.timedelta(days=5),
        refresh_before=dt.timedelta(days=1),
    )
    ok = _cli("--json", "ca", "status", "--ca-dir", str(ca_dir), "--warn-days", "30")
    assert ok.returncode == 0, ok.stderr
    rows = json.loads(ok.stdout)
    assert [(r["what"], r["state"]) for r in rows] == [("root CA", "ok"), ("issuing CA", "ok")]
    assert 3640 < rows[1]["days_left"] <= 3650
    assert _cli("ca", "status", "--ca-dir", str(ca_dir), "--warn-days", "4000").returncode == 1
    soon = _cli("--json", "crl", "status", "--crl", str(crl))
    assert soon.returncode == 1  # 5 days left, inside the default 7-day window
    row = json.loads(soon.stdout)[0]
    assert (row["state"], row["detail"]) == ("warning", "number 1, 1 revoked")
    assert _cli("crl", "status", "--crl", str(crl), "--warn-days", "2").returncode == 0
    missing = _cli("crl", "status", "--crl", str(tmp_path / "none.pem"))
    assert missing.returncode == 1 and "cannot be read" in missing.stderr
    assert "Traceback" not in missing.stderr


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


def test_bad_usage_exits_2_with_a_hint():
    run = _cli("tokens", "create")
    assert run.returncode == 2 and "Missing argument" in run.stderr and "--help" in run.stderr

"""vpn_gateway_cert through real ansible-playbook: check, real, real, check; diff; errors."""

from __future__ import annotations

import stat
import subprocess

import pytest

from iotistic_vpn import pki
from tests.support.ansible_run import run_playbook

pytestmark = pytest.mark.ansible


def test_gateway_cert_check_real_real_check_and_new_dns_names(tmp_path):
    ca_dir, dest = tmp_path / "ca", tmp_path / "gateways"
    pki.ensure_ca(pki.CaFiles.at(ca_dir))
    task = {"name": "gw-1", "dest": str(dest), "ca_path": str(ca_dir)}
    moved = {**task, "dns_names": ["gw-1", "vpn.example.net"]}
    run = run_playbook(
        [
            {"name": "Plan.", "vpn_gateway_cert": task, "check_mode": True, "diff": True},
            {"name": "Look.", "stat": {"path": str(dest)}},
            {"name": "Issue.", "vpn_gateway_cert": task},
            {"name": "Issue again.", "vpn_gateway_cert": task, "diff": True},
            {"name": "Plan again.", "vpn_gateway_cert": task, "check_mode": True},
            {"name": "Add a DNS name.", "vpn_gateway_cert": moved, "diff": True},
            {
                "name": "Bad name.",
                "vpn_gateway_cert": {**task, "name": "GW 1"},
                "ignore_errors": True,
            },
        ],
        tmp_path,
    )
    t = run.tasks
    plan, issue, again = t["Plan."], t["Issue."], t["Issue again."]
    assert plan["changed"] and plan["status"] == "issued" and plan["diff"]["before"] is None
    assert t["Look."]["stat"]["exists"] is False
    assert issue["changed"] and issue["dns_names"] == ["gw-1"]
    assert issue["cert_path"] == str(dest / "gw-1.crt")
    assert not again["changed"] and again["serial"] == issue["serial"]
    assert again["diff"]["before"] == again["diff"]["after"]
    assert not t["Plan again."]["changed"]
    dns = t["Add a DNS name."]
    assert dns["changed"] and dns["dns_names"] == ["gw-1", "vpn.example.net"]
    assert dns["diff"]["before"]["dns_names"] == ["gw-1"]
    assert dns["diff"]["before"]["serial"] == issue["serial"]
    bad = t["Bad name."]
    assert bad["failed"] and bad["msg"].startswith("invalid DNS name 'GW 1': ")
    assert not (dest / "GW 1.crt").exists()

    assert stat.S_IMODE((dest / "gw-1.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in run.stdout
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_dir / "root.crt"), "-untrusted",
         str(ca_dir / "ca.crt"), "-purpose", "sslserver", str(dest / "gw-1.crt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_tunnel_client_cert_is_for_the_tunnel_service_only(tmp_path):
    ca_dir, dest = tmp_path / "ca", tmp_path / "api"
    pki.ensure_ca(pki.CaFiles.at(ca_dir))
    task = {"name": "api", "dest": str(dest), "ca_path": str(ca_dir), "purpose": "tunnel-client"}
    run = run_playbook(
        [
            {"name": "Issue.", "vpn_gateway_cert": task},
            {"name": "Issue again.", "vpn_gateway_cert": task},
            {"name": "As a gateway.", "vpn_gateway_cert": {**task, "purpose": "gateway"}},
            {"name": "Back.", "vpn_gateway_cert": task},
            {
                "name": "Bad purpose.",
                "vpn_gateway_cert": {**task, "purpose": "device"},
                "ignore_errors": True,
            },
        ],
        tmp_path,
    )
    t = run.tasks
    issue, again = t["Issue."], t["Issue again."]
    assert issue["changed"] and issue["status"] == "issued"
    assert issue["purpose"] == "tunnel-client"
    assert not again["changed"] and again["serial"] == issue["serial"]
    # Another purpose is a new certificate on the same key (issued, not renewed), and back.
    assert t["As a gateway."]["changed"] and t["As a gateway."]["status"] == "issued"
    assert t["Back."]["changed"] and t["Back."]["serial"] != issue["serial"]
    assert t["Bad purpose."]["failed"] and "tunnel-client" in t["Bad purpose."]["msg"]
    assert stat.S_IMODE((dest / "api.key").stat().st_mode) == 0o600

    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(dest / "api.crt")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    usage = text.split("X509v3 Extended Key Usage:", 1)[1].splitlines()[1]
    assert "TLS Web Client Authentication" in usage
    assert "2.25.1892603378506917492182520152726709395" in usage
    assert "Server Authentication" not in text
    assert "O = Iotistic VPN tunnel client" in text.split("Subject:", 1)[1].splitlines()[0]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_dir / "root.crt"), "-untrusted",
         str(ca_dir / "ca.crt"), "-purpose", "sslclient", str(dest / "api.crt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr

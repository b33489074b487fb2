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

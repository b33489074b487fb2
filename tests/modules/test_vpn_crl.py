"""vpn_crl through real ansible-playbook: the CRL file as state, crl-verify dir, errors."""

from __future__ import annotations

import subprocess

import pytest

from iotistic_vpn import pki
from tests.support.ansible_run import run_playbook

pytestmark = pytest.mark.ansible

BIG = 0x3F_0123_4567_89AB_CDEF_0123_4567_89AB_CDEF  # a 158-bit serial, like ours


def test_crl_check_real_real_check_then_exact(tmp_path):
    ca_dir, crl, crl_dir = tmp_path / "ca", tmp_path / "crl.pem", tmp_path / "crl.d"
    pki.ensure_ca(pki.CaFiles.at(ca_dir))
    base = {"path": str(crl), "ca_path": str(ca_dir), "crl_dir": str(crl_dir)}
    revoke = {
        **base,
        "revoked": [
            {"serial": str(BIG), "reason": "key_compromise"},
            {"serial": "0x10", "revoked_at": "2026-01-31T12:00:00Z"},
        ],
    }
    exact = {**base, "state": "exact", "revoked": [{"serial": 16}, {"serial": 17}]}
    run = run_playbook(
        [
            {"name": "Plan.", "vpn_crl": revoke, "check_mode": True, "diff": True},
            {"name": "Look.", "stat": {"path": str(crl)}},
            {"name": "Revoke.", "vpn_crl": revoke, "diff": True},
            {"name": "Revoke again.", "vpn_crl": revoke},
            {"name": "Plan again.", "vpn_crl": revoke, "check_mode": True},
            {"name": "Make it exact.", "vpn_crl": exact, "diff": True},
        ],
        tmp_path,
    )
    assert run.failed == 0, run.stdout
    t = run.tasks
    plan, real, again = t["Plan."], t["Revoke."], t["Revoke again."]
    assert plan["changed"] and plan["added"] == ["16", str(BIG)] and plan["diff"]["before"] is None
    assert t["Look."]["stat"]["exists"] is False
    assert real["changed"] and real["entries"] == 2 and real["number"] == 1
    assert real["dir_added"] == ["16", str(BIG)]
    assert real["diff"]["after"]["entries"] == 2
    assert not again["changed"] and again["added"] == [] and again["number"] == 1
    assert not t["Plan again."]["changed"]
    ex = t["Make it exact."]
    assert (ex["added"], ex["removed"], ex["entries"], ex["number"]) == (["17"], [str(BIG)], 2, 2)
    assert ex["diff"]["before"]["entries"] == 2 and ex["diff"]["before"]["number"] == 1
    assert sorted(p.name for p in crl_dir.iterdir()) == ["16", "17"]

    entries = pki.crl_revocations(pki.pem_crl(crl.read_bytes(), str(crl)))
    assert {e.serial for e in entries} == {16, 17}
    check = subprocess.run(
        ["openssl", "crl", "-in", str(crl), "-CAfile", str(ca_dir / "ca-chain.crt"), "-noout"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.stderr.strip() == "verify OK"


def test_bad_revocations_fail_naming_the_value(tmp_path):
    ca_dir, crl = tmp_path / "ca", tmp_path / "crl.pem"
    pki.ensure_ca(pki.CaFiles.at(ca_dir))
    base = {"path": str(crl), "ca_path": str(ca_dir)}
    cases = {
        "Bad serial.": [{"serial": "12ab-not-a-serial"}],
        "Bad reason.": [{"serial": 5, "reason": "lost"}],
        "Bad time.": [{"serial": 5, "revoked_at": "last tuesday"}],
    }
    run = run_playbook(
        [
            {"name": n, "vpn_crl": {**base, "revoked": r}, "ignore_errors": True}
            for n, r in cases.items()
        ],
        tmp_path,
    )
    msgs = {n: run.tasks[n]["msg"] for n in cases}
    assert msgs["Bad serial."].startswith("invalid serial '12ab-not-a-serial': ")
    assert "lost" in msgs["Bad reason."] and "key_compromise" in msgs["Bad reason."]
    assert msgs["Bad time."].startswith("invalid revoked_at 'last tuesday': use an ISO 8601")
    assert not crl.exists()

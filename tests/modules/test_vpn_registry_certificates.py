"""vpn_device_cert -> vpn_registry: issued certificates recorded, rotated ones revoked."""

from __future__ import annotations

import psycopg
import pytest

from iotistic_vpn import pki as pki_lib
from tests.support.ansible_run import run_playbook

pytestmark = [pytest.mark.ansible, pytest.mark.postgres]


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _issue_and_record(pki) -> list[dict]:
    """A CA, devices pump-1 and pump-2 of acme, their certificates issued and recorded."""
    return [
        {"name": "CA.", "vpn_ca": {"path": str(pki / "ca")}},
        {"name": "Devices.", "vpn_registry": {"dsn": "{{ dsn }}", "customer": "acme",
                                              "devices": ["pump-1", "pump-2"]}},
        {"name": "Certificates.", "register": "issued",
         "vpn_device_cert": {"ca_path": str(pki / "ca"), "dest": str(pki / "devices"),
                             "devices": [{"customer": "acme", "device": d, "generate_key": True}
                                         for d in ("pump-1", "pump-2")]}},
        {"name": "Record.", "vpn_registry": {"dsn": "{{ dsn }}", "customer": "acme",
                                             "certificates": "{{ issued.certificates }}"}},
    ]  # fmt: skip


def test_certificates_are_recorded_once_and_rotation_revokes_the_old(registry_dsn, tmp_path):
    pki = tmp_path / "pki"
    tasks = _issue_and_record(pki)
    first = run_playbook(tasks, tmp_path, extra_vars={"dsn": registry_dsn})
    assert first.returncode == 0, first.stdout
    recorded = first.tasks["Record."]
    assert recorded["changed"] is True
    assert sorted(c["device_id"] for c in recorded["certificates"]) == ["pump-1", "pump-2"]
    serials = {c["device"]: c["serial"] for c in first.tasks["Certificates."]["certificates"]}
    assert _rows(registry_dsn, "SELECT device_id, serial::text FROM certificates ORDER BY 1") == [
        ("pump-1", serials["pump-1"]),
        ("pump-2", serials["pump-2"]),
    ]

    again = run_playbook(tasks, tmp_path, extra_vars={"dsn": registry_dsn})
    assert again.returncode == 0, again.stdout
    assert again.changed == 0

    # A rotation: the old serial of pump-1 is superseded once the new one is in use.
    revoke = [{"name": "Supersede.", "vpn_registry": {
        "dsn": "{{ dsn }}", "customer": "acme", "revoke_serials": [serials["pump-1"]],
        "revocation_reason": "superseded"}}]  # fmt: skip
    preview = run_playbook(revoke, tmp_path, check=True, extra_vars={"dsn": registry_dsn})
    assert preview.tasks["Supersede."]["changed"] is True
    assert _rows(
        registry_dsn, "SELECT count(*) FROM certificates WHERE revoked_at IS NOT NULL"
    ) == [(0,)]
    done = run_playbook(revoke, tmp_path, extra_vars={"dsn": registry_dsn})
    assert done.tasks["Supersede."]["changed"] is True
    assert _rows(
        registry_dsn,
        "SELECT serial::text, revocation_reason FROM certificates WHERE revoked_at IS NOT NULL",
    ) == [(serials["pump-1"], "superseded")]
    assert run_playbook(revoke, tmp_path, extra_vars={"dsn": registry_dsn}).changed == 0


def test_a_certificate_entry_missing_fields_fails_naming_them(registry_dsn, tmp_path):
    run = run_playbook(
        [{"name": "Bad.", "vpn_registry": {"dsn": "{{ dsn }}", "customer": "acme",
                                           "devices": ["pump-1"],
                                           "certificates": [{"device": "pump-1", "serial": "7"}]}}],
        tmp_path,
        extra_vars={"dsn": registry_dsn},
    )  # fmt: skip
    assert run.failed == 1
    assert "missing fingerprint, not_before, not_after" in run.tasks["Bad."]["msg"]
    assert _rows(registry_dsn, "SELECT count(*) FROM devices") == [(0,)]


def test_a_revoked_device_reaches_the_crl_from_the_registry_also_in_a_dry_run(
    registry_dsn, tmp_path
):
    """revoke_device.yml's steps: vpn_registry returns what it revoked, vpn_crl adds the rest."""
    pki = tmp_path / "pki"
    setup = [
        *_issue_and_record(pki),
        # pump-1 was revoked earlier: the CRL file knows nothing of it yet.
        {"name": "Earlier revoke.", "vpn_registry": {"dsn": "{{ dsn }}", "customer": "acme",
                                                     "devices": ["pump-1"], "state": "revoked"}},
    ]  # fmt: skip
    first = run_playbook(setup, tmp_path, extra_vars={"dsn": registry_dsn})
    assert first.returncode == 0, first.stdout
    serials = {c["device"]: c["serial"] for c in first.tasks["Certificates."]["certificates"]}
    earlier = first.tasks["Earlier revoke."]["revocations"]
    assert [(r["serial"], r["reason"]) for r in earlier] == [(serials["pump-1"], "unspecified")]

    revoke = [
        {"name": "Revoke.", "register": "revoked",
         "vpn_registry": {"dsn": "{{ dsn }}", "customer": "acme", "devices": ["pump-2"],
                          "state": "revoked", "revocation_reason": "key_compromise"}},
        {"name": "CRL.", "vpn_crl": {"path": str(pki / "crl.pem"), "ca_path": str(pki / "ca"),
                                     "revoked": "{{ revoked.revocations }}", "registry": True,
                                     "dsn": "{{ dsn }}"}},
    ]  # fmt: skip
    preview = run_playbook(revoke, tmp_path, check=True, extra_vars={"dsn": registry_dsn})
    assert preview.returncode == 0, preview.stdout
    # The dry run rolled pump-2 back, yet its serial is in the CRL it would sign.
    assert [r["serial"] for r in preview.tasks["Revoke."]["revocations"]] == [serials["pump-2"]]
    assert sorted(preview.tasks["CRL."]["added"]) == sorted(serials.values())
    assert not (pki / "crl.pem").exists()
    assert _rows(registry_dsn, "SELECT count(*) FROM certificates WHERE revoked_at IS NOT NULL"
                 ) == [(1,)]  # fmt: skip

    done = run_playbook(revoke, tmp_path, extra_vars={"dsn": registry_dsn})
    assert done.returncode == 0, done.stdout
    assert sorted(done.tasks["CRL."]["added"]) == sorted(serials.values())
    again = run_playbook(revoke, tmp_path, extra_vars={"dsn": registry_dsn})
    assert again.changed == 0 and again.tasks["Revoke."]["revocations"] == []

    crl = (pki / "crl.pem").read_bytes()
    entries = {e.serial: e.reason for e in pki_lib.crl_revocations(pki_lib.pem_crl(crl, "crl"))}
    assert entries == {int(serials["pump-1"]): None, int(serials["pump-2"]): "key_compromise"}


def test_vpn_crl_with_the_registry_down_fails_naming_it_and_writes_nothing(tmp_path):
    pki = tmp_path / "pki"
    run = run_playbook(
        [{"name": "CA.", "vpn_ca": {"path": str(pki / "ca")}},
         {"name": "CRL.", "vpn_crl": {"path": str(pki / "crl.pem"), "ca_path": str(pki / "ca"),
                                      "registry": True, "login_host": "127.0.0.1",
                                      "login_port": 9, "connect_timeout": 2}}],
        tmp_path,
    )  # fmt: skip
    assert run.failed == 1
    assert "127.0.0.1" in run.tasks["CRL."]["msg"]
    assert not (pki / "crl.pem").exists()

"""vpn_provision through the real ansible-playbook: registry rows, certificates, records."""

from __future__ import annotations

import subprocess

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.ansible_run import run_playbook

pytestmark = [pytest.mark.ansible, pytest.mark.postgres]


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _tasks(pki, devices) -> list[dict]:
    return [
        {"name": "CA.", "vpn_ca": {"path": str(pki / "ca")}},
        {"name": "Provision.", "vpn_provision": {
            "dsn": "{{ dsn }}", "customer": "acme", "ca_path": str(pki / "ca"),
            "dest": str(pki / "devices"), "devices": devices, "actor": "ci"}},
    ]  # fmt: skip


def test_check_run_rerun(registry_dsn, tmp_path):
    pki = tmp_path / "pki"
    devices = [{"device": f"pump-{i}", "csr": _csr()} for i in range(3)]
    devices.append({"device": "legacy-1", "generate_key": True})
    dsn = {"dsn": registry_dsn}

    ca = run_playbook(_tasks(pki, devices)[:1], tmp_path)
    assert ca.returncode == 0, ca.stdout
    preview = run_playbook(_tasks(pki, devices), tmp_path, check=True, diff=True, extra_vars=dsn)
    assert preview.returncode == 0, preview.stdout
    result = preview.tasks["Provision."]
    assert result["changed"] is True
    assert result["counts"] == {"issued": 4, "renewed": 0, "unchanged": 0}
    assert set(result["diff"]["after"]) == {"pump-0", "pump-1", "pump-2", "legacy-1"}
    # Check mode wrote nothing: no rows, no certificate files.
    assert _rows(registry_dsn, "SELECT count(*) FROM devices") == [(0,)]
    assert not (pki / "devices").exists()

    first = run_playbook(_tasks(pki, devices), tmp_path, extra_vars=dsn)
    assert first.returncode == 0, first.stdout
    done = {d["device"]: d for d in first.tasks["Provision."]["devices"]}
    assert [done[f"pump-{i}"]["vpn_address"] for i in range(3)] == [
        "100.64.0.2", "100.64.0.3", "100.64.0.4"]  # fmt: skip
    # Each certificate on disk is the one the registry recorded, and chains to the CA.
    for name, device in done.items():
        cert = x509.load_pem_x509_certificate((pki / "devices/acme" / f"{name}.crt").read_bytes())
        assert str(cert.serial_number) == device["serial"]
    assert sorted(
        _rows(registry_dsn, "SELECT device_id, serial::text FROM certificates")
    ) == sorted((name, d["serial"]) for name, d in done.items())
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", pki / "ca/root.crt", "-untrusted", pki / "ca/ca.crt",
         pki / "devices/acme/pump-0.crt"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert oct((pki / "devices/acme/legacy-1.key").stat().st_mode & 0o777) == "0o600"
    assert "PRIVATE KEY" not in first.stdout  # the central key is in its file, not the result

    again = run_playbook(_tasks(pki, devices), tmp_path, extra_vars=dsn)
    assert again.changed == 0
    assert again.tasks["Provision."]["counts"]["unchanged"] == 4


def test_a_bad_csr_fails_naming_the_device_and_changes_nothing(registry_dsn, tmp_path):
    pki = tmp_path / "pki"
    devices = [{"device": "pump-1", "csr": _csr()}, {"device": "pump-2", "csr": "not a csr"}]
    run = run_playbook(_tasks(pki, devices), tmp_path, extra_vars={"dsn": registry_dsn})
    assert run.failed == 1
    assert "pump-2" in run.tasks["Provision."]["msg"]
    assert _rows(registry_dsn, "SELECT count(*) FROM devices") == [(0,)]
    assert not (pki / "devices/acme/pump-1.crt").exists()


def test_the_registry_down_fails_clearly(pg_server, registry_dsn, tmp_path):
    pki = tmp_path / "pki"
    pg_server.stop()
    try:
        run = run_playbook(
            _tasks(pki, [{"device": "pump-1", "csr": _csr()}]), tmp_path,
            extra_vars={"dsn": registry_dsn},
        )  # fmt: skip
    finally:
        pg_server.start()
    assert run.failed == 1
    msg = run.tasks["Provision."]["msg"]
    assert "is unavailable" in msg and pg_server.password not in msg

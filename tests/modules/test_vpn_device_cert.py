"""vpn_device_cert through real ansible-playbook: single and batch forms, renewal, errors."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from iotistic_vpn import pki
from tests.support.ansible_run import run_playbook

pytestmark = pytest.mark.ansible


def csr_pem(key=None) -> str:
    key = key or pki.generate_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def ca_dir(tmp_path) -> Path:
    path = tmp_path / "ca"
    pki.ensure_ca(pki.CaFiles.at(path), passphrase="ca-secret")
    return path


def names(*task_names: str, run) -> list[dict]:
    return [run.tasks[name] for name in task_names]


def test_single_device_check_real_real_check(ca_dir, tmp_path):
    dest = tmp_path / "certs"
    task = {
        "vpn_device_cert": {
            "ca_path": str(ca_dir), "ca_passphrase": "ca-secret", "dest": str(dest),
            "customer": "acme", "device": "dev-1", "csr": csr_pem(),
        }
    }  # fmt: skip
    run = run_playbook(
        [
            {"name": "Plan.", **task, "check_mode": True, "diff": True},
            {"name": "Look.", "stat": {"path": str(dest / "acme" / "dev-1.crt")}},
            {"name": "Issue.", **task, "diff": True},
            {"name": "Issue again.", **task},
            {"name": "Plan again.", **task, "check_mode": True},
        ],
        tmp_path,
    )
    assert run.failed == 0, run.stdout
    plan, look, issue, again, plan_again = names(
        "Plan.", "Look.", "Issue.", "Issue again.", "Plan again.", run=run
    )
    assert plan["changed"] and plan["issued"] == ["acme/dev-1"] and plan["status"] == "issued"
    assert plan["diff"]["before"] == {"acme/dev-1": None}
    assert look["stat"]["exists"] is False
    assert issue["changed"] and issue["path"] == str(dest / "acme" / "dev-1.crt")
    assert issue["diff"]["after"]["acme/dev-1"]["serial"] == issue["serial"]
    assert not again["changed"] and again["serial"] == issue["serial"]
    assert again["status"] == "unchanged" and again["issued"] == []
    assert not plan_again["changed"]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_dir / "root.crt"),
         "-untrusted", str(ca_dir / "ca.crt"), "-purpose", "sslclient", issue["path"]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert "ca-secret" not in run.stdout


def test_batch_with_central_key_and_renewal(ca_dir, tmp_path):
    dest = tmp_path / "certs"
    csr_file = tmp_path / "dev-2.csr"
    csr_file.write_text(csr_pem())
    devices = [
        {"customer": "acme", "device": "dev-1", "csr": csr_pem()},
        {"customer": "acme", "device": "dev-2", "csr_path": str(csr_file)},
        {"customer": "beta", "device": "dev-3", "generate_key": True, "key_type": "ed25519"},
    ]
    base = {"ca_path": str(ca_dir), "ca_passphrase": "ca-secret", "dest": str(dest)}
    run = run_playbook(
        [
            # 40-day certificates stay out of the default 30-day renewal window...
            {
                "name": "Issue.",
                "vpn_device_cert": {**base, "devices": devices, "validity_days": 40},
            },
            {
                "name": "Issue again.",
                "vpn_device_cert": {**base, "devices": devices, "validity_days": 40},
            },
            # ...and fall inside a 60-day one, renewed for the default two years.
            {
                "name": "Renew all.",
                "vpn_device_cert": {**base, "devices": devices, "renew_within_days": 60},
                "diff": True,
            },
        ],
        tmp_path,
    )
    assert run.failed == 0, run.stdout
    issue, again, renew = names("Issue.", "Issue again.", "Renew all.", run=run)
    assert issue["issued"] == ["acme/dev-1", "acme/dev-2", "beta/dev-3"]
    assert [c["path"] for c in issue["certificates"]] == [
        str(dest / "acme" / "dev-1.crt"), str(dest / "acme" / "dev-2.crt"),
        str(dest / "beta" / "dev-3.crt"),
    ]  # fmt: skip
    key_path = dest / "beta" / "dev-3.key"
    assert issue["certificates"][2]["key_path"] == str(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in run.stdout  # key material only ever goes to the file
    assert not again["changed"] and {c["status"] for c in again["certificates"]} == {"unchanged"}

    assert renew["changed"] and renew["renewed"] == ["acme/dev-1", "acme/dev-2", "beta/dev-3"]
    old_serials = {c["device"]: c["serial"] for c in issue["certificates"]}
    assert renew["diff"]["before"]["acme/dev-1"]["serial"] == old_serials["dev-1"]
    assert renew["diff"]["after"]["acme/dev-1"]["serial"] != old_serials["dev-1"]
    cert = x509.load_pem_x509_certificate((dest / "beta" / "dev-3.crt").read_bytes())
    assert cert.public_key() == pki.read_private_key(key_path).public_key()  # same key kept


def test_bad_input_fails_naming_the_value_and_writes_nothing(ca_dir, tmp_path):
    dest = tmp_path / "certs"
    base = {"ca_path": str(ca_dir), "ca_passphrase": "ca-secret", "dest": str(dest)}
    weak = csr_pem(rsa.generate_private_key(65537, 1024))  # noqa: S505 (the weak key under test)
    cases = {
        "Bad customer.": {**base, "customer": "Acme", "device": "dev-1", "csr": csr_pem()},
        "Weak key.": {
            **base,
            "devices": [
                {"customer": "acme", "device": "dev-1", "csr": csr_pem()},
                {"customer": "acme", "device": "dev-2", "csr": weak},
            ],
        },
        "No CSR.": {**base, "customer": "acme", "device": "dev-1"},
        "Two CSRs.": {
            **base, "customer": "acme", "device": "dev-1", "csr": csr_pem(),
            "csr_path": "/nonexistent",
        },
        "Wrong CA passphrase.": {**base, "ca_passphrase": "guess", "customer": "acme",
                                 "device": "dev-1", "csr": csr_pem()},
    }  # fmt: skip
    run = run_playbook(
        [{"name": n, "vpn_device_cert": a, "ignore_errors": True} for n, a in cases.items()],
        tmp_path,
    )
    msgs = {name: run.tasks[name]["msg"] for name in cases}
    assert all(run.tasks[name]["failed"] for name in cases)
    assert msgs["Bad customer."].startswith("invalid customer id 'Acme': ")
    assert msgs["Weak key."].startswith(
        "invalid public key of device 'acme/dev-2': RSA-1024 is too weak"
    )
    assert msgs["No CSR."] == (
        "invalid device 'acme/dev-1': give exactly one of csr, csr_path, generate_key"
    )
    assert msgs["Two CSRs."] == "parameters are mutually exclusive: csr|csr_path"
    assert msgs["Wrong CA passphrase."].startswith(
        f"invalid passphrase for private key '{ca_dir / 'ca.key'}'"
    )
    assert not dest.exists()  # dev-1 of the weak batch was not written either

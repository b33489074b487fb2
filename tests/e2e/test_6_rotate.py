"""rotate_certs.yml on one device: a new certificate for the same key, the old one superseded.

The lab's certificates are fresh (730 days), so the test makes one due by asking for a window
of 1000 days (and a validity of 1001, which a window must stay below).
"""

from __future__ import annotations

from tests.e2e.lab import (
    GATEWAYS,
    ansible_playbook,
    fleet,
    gateway_crl,
    in_container,
    lab_devices,
    registry,
    through_api,
    wait_for,
)

DEVICE_PKI = "/etc/openvpn/client/iotistic"
CRL_DIR = "/var/lib/iotistic-vpn/crl.d"


def _serial_on_device(device: str) -> int:
    out = in_container(
        device, "openssl", "x509", "-noout", "-serial", "-in", f"{DEVICE_PKI}/device.crt"
    ).stdout
    return int(out.strip().removeprefix("serial="), 16)


def _key_digest(device: str) -> str:
    return in_container(device, "sha256sum", f"{DEVICE_PKI}/device.key").stdout.split()[0]


def test_rotation_renews_on_the_same_key_reconnects_and_supersedes_the_old_serial():
    device = fleet()[-1]
    old_serial, key = _serial_on_device(device.id), _key_digest(device.id)

    run = ansible_playbook(
        "rotate_certs.yml",
        "--limit",
        device.id,
        "-e",
        "renew_within_days=1000",
        "-e",
        "vpn_pki_device_validity_days=1001",
    )
    assert run.returncode == 0, run.messages()
    assert run.stats[device.id]["changed"] >= 1

    new_serial = _serial_on_device(device.id)
    assert new_serial != old_serial
    assert _key_digest(device.id) == key, "the device's key changed"
    with registry() as reg:
        certs = {c.serial: c for c in reg.certificates(device.customer_id, device.id)}
    assert certs[old_serial].revocation_reason == "superseded"
    assert certs[new_serial].revoked_at is None

    # Connected with the new certificate, reachable as before; the gateways refuse the old one.
    now = wait_for(
        lambda: (d := lab_devices()[device.id]).connected and d, 30, f"{device.id} to be connected"
    )
    assert now.vpn_address == device.vpn_address
    answer = through_api(now.id)  # through the API and the gateway the registry names
    assert answer.ok and answer.json()["device_id"] == device.id, answer
    for gateway in GATEWAYS:
        # Published by the same run (delegated past --limit), not at the next revoke.
        crl = gateway_crl(gateway)
        assert crl.get_revoked_certificate_by_serial_number(old_serial) is not None, gateway
        wait_for(
            lambda g=gateway: (
                in_container(g, "test", "-e", f"{CRL_DIR}/{old_serial}").returncode == 0
            ),
            10,
            f"{CRL_DIR}/{old_serial} on {gateway}",
        )

    again = ansible_playbook("rotate_certs.yml", "--limit", device.id)
    assert again.returncode == 0, again.messages()
    assert again.changed_hosts() == {}, again.changed_tasks()

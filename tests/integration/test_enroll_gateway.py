"""Devices that enrolled through the API (their own CSR, or a bundle) connect through the
real gateway.

Real PostgreSQL, the API with enrollment on (the fleet's CA and tls-crypt-v2 server key), a
real gateway (OpenVPN, the agent, its tunnel service) and a device namespace running OpenVPN
with exactly the files the enrollment answer carried.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotistic_vpn.registry import Registry
from tests.support.api_harness import start_api
from tests.support.gateway_harness import UP, eventually

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def test_an_enrolled_device_connects_and_its_agent_is_reached(start_gateway, pg_server, tmp_path):
    gw = start_gateway()
    fleet = gw.fleet
    env = {
        "IOTISTIC_API_ENROLL_PKI_DIR": str(fleet.root / "ca"),
        "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(fleet.gateway_dir / "tls-crypt-v2.key"),
        "IOTISTIC_API_ENROLL_REMOTES": f"{gw.ns.address}:11940",
        "IOTISTIC_API_ENROLL_CERT_DIR": str(gw.work / "enrolled"),
    }
    api = start_api(gw, pg_server, env=env)
    with Registry(api.dsn) as reg:
        _, token = reg.ensure_provisioning_token(
            "acme",
            "factory",
            actor="test",
            expires_at=datetime.now(UTC) + timedelta(days=1),
            max_uses=2,
        )
        _, reader = reg.ensure_token("reader", customer_id="acme", actor="test")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    body = {"device": "dev-new", "csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
    with api.client(token.value) as c:
        answer = c.post("/v1/enroll", json=body)
    assert answer.status_code == 201, answer.text
    got = answer.json()
    assert got["remotes"] == [{"host": str(gw.ns.address), "port": 11940, "proto": "udp"}]
    files = {"device.crt": got["certificate"], "ca.pem": got["ca_chain"],
             "tls-crypt-v2.key": got["tls_crypt_v2_key"],
             "device.key": key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode()}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    # The harness's client config takes the fleet's chain; the answer's is the same CA's.
    assert got["ca_chain"] == fleet.chain.read_text()
    device = gw.device("dev-new", 0, files=(tmp_path / "device.crt", tmp_path / "device.key",
                                            tmp_path / "tls-crypt-v2.key", "acme"))  # fmt: skip
    device.client.wait_for(UP)
    eventually(lambda: gw.db("dev-new") == (True, "gw-1", "active"), "dev-new online")
    with Registry(api.dsn) as reg:
        assert reg.find_device("dev-new").vpn_address == got["address"]
    with api.client(reader.value) as c:
        agent = c.get("/v1/devices/dev-new/proxy/v1/device")
    assert agent.status_code == 200, agent.text
    assert (agent.json()["device_id"], agent.json()["customer_id"]) == ("dev-new", "acme")

    # The server-side bundle: OpenVPN runs the .ovpn file as it came, nothing added.
    with api.client(token.value) as c:
        made = c.post("/v1/devices/dev-kiosk/bundle", json={})
    assert made.status_code == 201, made.text
    ovpn = tmp_path / "dev-kiosk.ovpn"
    ovpn.write_text(made.text)
    ovpn.chmod(0o600)
    kiosk = gw.ul.namespace("kiosk").start(["openvpn", "--config", str(ovpn)],
                                           gw.work / "dev-kiosk.log")  # fmt: skip
    kiosk.wait_for(UP)
    eventually(lambda: gw.db("dev-kiosk") == (True, "gw-1", "active"), "dev-kiosk online")

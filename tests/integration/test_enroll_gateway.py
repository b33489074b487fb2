"""Devices that enrolled through the API (with iotistic-vpn-enroll, or as a bundle) connect
through the real gateway.

Real PostgreSQL, the API with enrollment on (the fleet's CA and tls-crypt-v2 server key) on
loopback inside its namespace, the device's own client run there against its HTTPS listener
(IOTISTIC_API_TLS_LISTEN, the certificate checked against CA_BUNDLE, name included), a real gateway
(OpenVPN, the agent, its tunnel service) and a device namespace running OpenVPN with exactly
the files the client wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from iotistic_vpn import enroll_client
from iotistic_vpn.registry import Registry
from tests.support.api_harness import start_api
from tests.support.gateway_harness import UP, eventually
from tests.support.loopback_api import free_port

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
    }
    port, tls_port = free_port(), free_port()
    cert, key = tmp_path / "https.crt", tmp_path / "https.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    env |= {"IOTISTIC_API_TLS_LISTEN": f"127.0.0.1:{tls_port}",
            "IOTISTIC_API_TLS_CERT": str(cert), "IOTISTIC_API_TLS_KEY": str(key)}  # fmt: skip
    api = start_api(gw, pg_server, env=env, port=port)
    base = f"http://127.0.0.1:{port}"
    with Registry(api.dsn) as reg:
        _, token = reg.ensure_provisioning_token(
            "acme", "factory", actor="test", expires_at=datetime.now(UTC) + timedelta(days=1),
            max_uses=2,
        )  # fmt: skip
        _, reader = reg.ensure_token("reader", customer_id="acme", actor="test")
    token_file = tmp_path / "token"
    token_file.write_text(token.value + "\n")
    token_file.chmod(0o600)
    pki_dir = tmp_path / "pki"
    client_env = {"PATH": os.environ["PATH"],
                  "IOTISTIC_ENROLL_API_URL": f"https://localhost:{tls_port}",
                  "IOTISTIC_ENROLL_CA_BUNDLE": str(cert),
                  "IOTISTIC_ENROLL_TOKEN_FILE": str(token_file),
                  "IOTISTIC_ENROLL_DEVICE_ID": "dev-new",
                  "IOTISTIC_ENROLL_PKI_DIR": str(pki_dir),
                  "IOTISTIC_ENROLL_CONFIG": str(tmp_path / "none.conf")}  # fmt: skip
    # Debian's own python3, as on a device: the client needs nothing but the standard library.
    run = gw.api_ns.run(["/usr/bin/python3", "-I", enroll_client.__file__], env=client_env,
                        check=False, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert (pki_dir / "remotes.conf").read_text() == f"remote {gw.ns.address} 11940 udp\n"
    # The harness's client config takes the fleet's chain; the client's ca.pem is the same CA's.
    assert (pki_dir / "ca.pem").read_text() == fleet.chain.read_text()
    files = (pki_dir / "device.crt", pki_dir / "device.key", pki_dir / "tls-crypt-v2.key", "acme")
    device = gw.device("dev-new", 0, files=files)
    device.client.wait_for(UP)
    eventually(lambda: gw.db("dev-new") == (True, "gw-1", "active"), "dev-new online")
    with Registry(api.dsn) as reg:
        address = reg.find_device("dev-new").vpn_address
    assert json.loads((pki_dir / "enrollment.json").read_text())["address"] == address
    agent = _curl(gw, f"{base}/v1/devices/dev-new/proxy/v1/device", reader.value)
    assert json.loads(agent)["device_id"] == "dev-new"
    # The server-side bundle: OpenVPN runs the .ovpn file as it came, nothing added.
    ovpn = tmp_path / "dev-kiosk.ovpn"
    _curl(gw, f"{base}/v1/devices/dev-kiosk/bundle", token.value, "-X", "POST",
          "-H", "Content-Type: application/json", "-d", "{}", "-o", str(ovpn))  # fmt: skip
    ovpn.chmod(0o600)
    assert "<key>" in ovpn.read_text()
    kiosk = gw.ul.namespace("kiosk").start(["openvpn", "--config", str(ovpn)],
                                           gw.work / "dev-kiosk.log")  # fmt: skip
    kiosk.wait_for(UP)
    eventually(lambda: gw.db("dev-kiosk") == (True, "gw-1", "active"), "dev-kiosk online")


def _curl(gw, url: str, token: str, *args: str) -> str:
    run = gw.api_ns.run(["curl", "-sf", "--max-time", "10", "-H", f"Authorization: Bearer {token}",
                         *args, url], check=False)  # fmt: skip
    assert run.returncode == 0, f"{url}: {run.returncode} {run.stderr}"
    return run.stdout

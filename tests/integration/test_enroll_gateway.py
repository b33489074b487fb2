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
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotistic_vpn import conventions, enroll_client, pki
from iotistic_vpn.registry import Registry
from tests.support.api_harness import start_api
from tests.support.gateway_harness import UP, eventually
from tests.support.loopback_api import free_port

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def _enrolling_api(gw, pg_server, tmp_path, env: dict[str, str] | None = None):
    """The API with enrollment on, plain on 127.0.0.1:port and HTTPS on every address of the
    api namespace (its certificate names localhost and that address); a provisioning token
    (file 0600) and a reader token of acme; the client's settings to enroll dev-new."""
    fleet = gw.fleet
    env = {
        "IOTISTIC_API_ENROLL_PKI_DIR": str(fleet.root / "ca"),
        "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(fleet.gateway_dir / "tls-crypt-v2.key"),
        "IOTISTIC_API_ENROLL_REMOTES": f"{gw.ns.address}:11940",
        **(env or {}),
    }
    port, tls_port = free_port(), free_port()
    cert, key = tmp_path / "https.crt", tmp_path / "https.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", f"subjectAltName=DNS:localhost,IP:{gw.api_ns.address}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    env |= {"IOTISTIC_API_TLS_LISTEN": f"0.0.0.0:{tls_port}",
            "IOTISTIC_API_TLS_CERT": str(cert), "IOTISTIC_API_TLS_KEY": str(key)}  # fmt: skip
    api = start_api(gw, pg_server, env=env, port=port)
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
    return SimpleNamespace(api=api, base=f"http://127.0.0.1:{port}", tls_port=tls_port,
                           https_cert=cert, token=token, reader=reader, pki_dir=pki_dir,
                           client_env=client_env)  # fmt: skip


def _enroll(gw, setup) -> None:
    """iotistic-vpn-enroll for dev-new, run by Debian's own python3 as on a device (it needs
    nothing but the standard library)."""
    run = gw.api_ns.run(["/usr/bin/python3", "-I", enroll_client.__file__],
                        env=setup.client_env, check=False, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_enrolled_device_connects_and_its_agent_is_reached(start_gateway, pg_server, tmp_path):
    gw = start_gateway()
    fleet = gw.fleet
    setup = _enrolling_api(gw, pg_server, tmp_path)
    api, base, token, reader, pki_dir = (setup.api, setup.base, setup.token, setup.reader,
                                         setup.pki_dir)  # fmt: skip
    _enroll(gw, setup)
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


def _renewal_client_cert(gw) -> tuple[Path, Path]:
    """The gateway's renewal client certificate, made for its own server key (no new secret)."""
    ca = pki.load_issuing_ca(pki.CaFiles.at(gw.fleet.root / "ca"))
    key_path = gw.fleet.gateway_dir / "server.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    cert = pki.issue_gateway_cert(ca, gw.name, [gw.name], key.public_key(),
                                  purpose="renewal-client")  # fmt: skip
    cert_path = gw.work / "renewal.crt"
    cert_path.write_bytes(pki.certificate_pem(cert))
    return cert_path, key_path


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _in_tunnel(device, url: str, *args: str) -> tuple[int, dict]:
    """curl from the device's namespace: (status, JSON answer)."""
    run = device.ns.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", *args, url],
                        check=False, timeout=30)  # fmt: skip
    body, _, code = run.stdout.rpartition("\n")
    return int(code or 0), json.loads(body) if body.strip().startswith("{") else {}


def test_a_device_renews_through_its_tunnel_and_only_its_new_connect_supersedes(
    start_gateway, pg_server, tmp_path
):
    gw = start_gateway()
    # Every certificate is inside its renewal window a second after it is signed (certificate
    # times are whole seconds), at the API and at the device (RENEW_WITHIN_DAYS below).
    setup = _enrolling_api(gw, pg_server, tmp_path, {
        "IOTISTIC_API_TLS_CLIENT_CA": str(gw.fleet.chain),
        "IOTISTIC_API_ENROLL_VALIDITY_DAYS": "2",
        "IOTISTIC_API_ENROLL_RENEW_WITHIN_DAYS": "1.9999999",
    })  # fmt: skip
    cert, key = _renewal_client_cert(gw)
    with gw.config.open("a") as conf:
        conf.write(f'[renewal]\napi_url = "https://{gw.api_ns.address}:{setup.tls_port}"\n'
                   f'cert = "{cert}"\nkey = "{key}"\nca = "{setup.https_cert}"\n'
                   "timeout_s = 10\n")  # fmt: skip
    gw.stop_agent()
    gw.start_agent()  # the instances keep running: the new agent adopts them
    _enroll(gw, setup)
    pki_dir = setup.pki_dir
    old = _serial(pki_dir / "device.crt")
    key_before = (pki_dir / "device.key").read_bytes()
    files = (pki_dir / "device.crt", pki_dir / "device.key", pki_dir / "tls-crypt-v2.key", "acme")
    device = gw.device("dev-new", 0, files=files)
    device.client.wait_for(UP)
    eventually(lambda: gw.db("dev-new") == (True, "gw-1", "active"), "dev-new online")
    url = f"http://{conventions.gateway_instances(1)[0].address}:{conventions.RENEW_PORT}"
    url += conventions.RENEW_PATH
    assert _in_tunnel(device, url) == (200, {"device": "dev-new", "customer": "acme",
                                             "serial": str(old)})  # fmt: skip

    # The device's own client, on its timer, in its own namespace: through the tunnel only.
    env = {**setup.client_env, "IOTISTIC_ENROLL_RENEW_WITHIN_DAYS": "30",
           "IOTISTIC_ENROLL_TUNNEL_RESTART": f"kill -HUP {device.client.pid}",
           "IOTISTIC_ENROLL_TUNNEL_UP_TIMEOUT_S": "60"}  # fmt: skip
    run = device.ns.run(["/usr/bin/python3", "-I", enroll_client.__file__], env=env,
                        check=False, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    new = _serial(pki_dir / "device.crt")
    assert new != old and (pki_dir / "device.key").read_bytes() == key_before
    assert f"the tunnel is up with certificate {new}" in run.stdout
    assert sorted(p.name for p in pki_dir.glob("device.*")) == ["device.crt", "device.key"]
    assert _in_tunnel(device, url)[1]["serial"] == str(new)

    def superseded():
        with Registry(setup.api.dsn) as reg:
            return [(c.serial, c.revocation_reason) for c in reg.certificates("acme", "dev-new")]

    eventually(lambda: superseded() == [(old, "superseded"), (new, None)], "old superseded")
    with Registry(setup.api.dsn) as reg:
        (renewed,) = reg.audit_log(device_id="dev-new", action="renew", limit=5)
        (revoked,) = reg.audit_log(device_id="dev-new", action="certificate.revoke", limit=5)
    # Superseded by the connect with the new certificate, after the renewal, never by it.
    assert renewed.actor == revoked.actor == "gateway:gw-1"
    assert renewed.detail["session_serial"] == str(old) and renewed.detail["serial"] == str(new)
    assert revoked.id > renewed.id and revoked.detail["superseded_by"] == str(new)
    eventually(lambda: (gw.crl_dir / str(old)).exists(), "the old serial in crl.d")
    assert "renewal for dev-new of acme" in gw.log()

    # Refusals. A CSR naming another device, through the tunnel: the API refuses, audited.
    csr = subprocess.run(["openssl", "req", "-new", "-key", str(pki_dir / "device.key"), "-subj",
                          "/CN=dev-a"], capture_output=True, check=True).stdout  # fmt: skip
    (tmp_path / "other.csr").write_bytes(csr)
    status, answer = _in_tunnel(device, url, "--data-binary", f"@{tmp_path / 'other.csr'}")
    assert status == 422 and "dev-a" in answer["detail"]
    # Not from a gateway: the device's own certificate straight at the API.
    status, answer = _in_tunnel(
        device, f"https://{gw.api_ns.address}:{setup.tls_port}/v1/renewals",
        "--cacert", str(setup.https_cert), "--cert", str(pki_dir / "device.crt"),
        "--key", str(pki_dir / "device.key"), "-H", "Content-Type: application/json",
        "--data", json.dumps({"device": "dev-new", "customer": "acme", "serial": str(new),
                              "csr": csr.decode()}),
    )  # fmt: skip
    assert status == 403 and "not a gateway" in answer["detail"]
    with Registry(setup.api.dsn) as reg:
        refused = reg.audit_log(action="renew.refused", limit=10)
    assert sorted((e.actor, e.detail["reason"]) for e in refused) == [
        ("anonymous", "gateway"), ("gateway:gw-1", "csr"),
    ]  # fmt: skip
    # An address with no session (the gateway's own), and a revoked device, whose session the
    # agent ends: refused at the gateway (its log), nothing reaches the API.
    status, answer = _curl_status(gw, url)
    assert status == 403 and "no session" in answer["detail"]
    with Registry(setup.api.dsn) as reg:
        reg.revoke_device("acme", "dev-new", actor="test")
    eventually(lambda: _in_tunnel(device, url, "--max-time", "2")[0] != 200, "session ended")
    assert "refused: no session of this gateway has that address" in gw.log()
    with Registry(setup.api.dsn) as reg:
        assert len(reg.audit_log(action="renew", limit=10)) == 1  # nothing more was signed


def _curl_status(gw, url: str) -> tuple[int, dict]:
    code, body = gw.curl(url)
    return code, json.loads(body) if body.strip().startswith("{") else {}

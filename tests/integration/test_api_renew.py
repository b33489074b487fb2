"""POST /v1/renewals against the real API process (a login of the API's group role) and
PostgreSQL, over the API's own HTTPS listener with client certificates asked for.

What the gateway agent would send is sent here by hand, with the gateway's renewal client
certificate (its own key): the checks, the answer, the audit entries, nothing left behind by a
refusal, and the old certificate superseded only by the connect with the new one (migration
0010). tests/integration/test_enroll_gateway.py runs the whole path through a real gateway.
"""

from __future__ import annotations

import ssl
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from psycopg.conninfo import conninfo_to_dict

from iotistic_vpn import pki
from iotistic_vpn.pki import tlscrypt
from iotistic_vpn.registry import ConnectionEvent, Registry
from tests.support.loopback_api import (
    api_login,
    free_port,
    loopback_api,
    openssl_verify,
    scratch_database,
)
from tests.support.loopback_api import make_csr as _csr

pytestmark = pytest.mark.postgres


class Lab:
    def __init__(self, base: str, tls: str, dsn: str, work, ca: pki.IssuingCA) -> None:
        self.base, self.tls, self.dsn, self.work, self.ca = base, tls, dsn, work, ca
        self.chain = str(work / "ca" / pki.CA_CHAIN)

    def reg(self) -> Registry:
        return Registry(self.dsn)

    def enroll(self, device: str, key=None) -> tuple[dict, object]:
        with self.reg() as reg:
            _, token = reg.ensure_provisioning_token(
                "acme", f"t-{uuid.uuid4().hex[:8]}", actor="test",
                expires_at=datetime.now(UTC) + timedelta(days=1),
            )  # fmt: skip
        csr, key = _csr(key)
        auth = {"Authorization": f"Bearer {token.value}"}
        answer = httpx.post(f"{self.base}/v1/enroll", json={"device": device, "csr": csr},
                            headers=auth, timeout=15)  # fmt: skip
        assert answer.status_code == 201, answer.text
        return answer.json(), key

    def client_cert(self, name: str, purpose: str) -> tuple[str, str]:
        made = pki.ensure_gateway_cert(self.ca, name, self.work / purpose, purpose=purpose)
        return made.cert_path, made.key_path

    def renew(self, body: dict, cert: tuple[str, str] | None) -> httpx.Response:
        context = ssl.create_default_context(cafile=self.chain)
        if cert is not None:
            context.load_cert_chain(*cert)
        with httpx.Client(verify=context, timeout=15) as client:
            return client.post(f"{self.tls}/v1/renewals", json=body)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pg_server):
    work = tmp_path_factory.mktemp("renew")
    with scratch_database(pg_server, "renew") as dsn:
        yield from _lab(work, dsn, pg_server)


def _lab(work, dsn: str, pg_server):
    with Registry(dsn) as reg:
        reg.ensure_customer("acme", actor="test")
        reg.ensure_customer("globex", actor="test")
    ca = pki.ensure_ca(pki.CaFiles.at(work / "ca")).ca
    (work / "tc.key").write_bytes(tlscrypt.generate_server_key())
    server = pki.ensure_gateway_cert(ca, "localhost", work / "https")
    tls_port = free_port()
    env = {
        "IOTISTIC_API_ENROLL_PKI_DIR": str(work / "ca"),
        "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(work / "tc.key"),
        "IOTISTIC_API_ENROLL_REMOTES": "gw1.example.net",
        "IOTISTIC_API_ENROLL_CERT_DIR": str(work / "enrolled"),
        # Every certificate is inside its renewal window once a second (certificate times are
        # whole seconds) has passed since it was signed.
        "IOTISTIC_API_ENROLL_VALIDITY_DAYS": "2",
        "IOTISTIC_API_ENROLL_RENEW_WITHIN_DAYS": "1.9999999",
        "IOTISTIC_API_TLS_LISTEN": f"127.0.0.1:{tls_port}",
        "IOTISTIC_API_TLS_CERT": server.cert_path,
        "IOTISTIC_API_TLS_KEY": server.key_path,
        "IOTISTIC_API_TLS_CLIENT_CA": str(work / "ca" / pki.CA_CHAIN),
    }
    dbname = conninfo_to_dict(dsn)["dbname"]
    with loopback_api(work / "api", api_login(pg_server, dbname), env) as base:
        yield Lab(base, f"https://localhost:{tls_port}", dsn, work, ca)


def _serial(answer: dict) -> int:
    return x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number


def _certificates(lab: Lab, device: str) -> list[tuple[int, str | None]]:
    with lab.reg() as reg:
        return [(c.serial, c.revocation_reason) for c in reg.certificates("acme", device)]


def test_a_gateway_renews_its_device_and_the_connect_supersedes_the_old_one(lab, tmp_path):
    enrolled, key = lab.enroll("pump-1")
    old = _serial(enrolled)
    with lab.reg() as reg:
        reg.record_connect("pump-1", "gw-1")
    gateway = lab.client_cert("gw-1", "renewal-client")
    csr, _ = _csr(key, [(NameOID.COMMON_NAME, "pump-1")])
    time.sleep(1.1)  # into the renewal window (above)
    body = {"device": "pump-1", "customer": "acme", "serial": str(old), "csr": csr}
    answer = lab.renew(body, gateway)
    assert answer.status_code == 200, answer.text
    renewed = answer.json()
    new = _serial(renewed)
    assert new != old and renewed["serial"] == str(new) and renewed["status"] == "renewed"
    cert = x509.load_pem_x509_certificate(renewed["certificate"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert pki.device_identity(cert) == pki.DeviceIdentity("acme", "pump-1")
    openssl_verify(tmp_path, renewed["ca_chain"], renewed["certificate"])
    # Both valid until the device connected with the new one.
    assert _certificates(lab, "pump-1") == [(old, None), (new, None)]
    with lab.reg() as reg:
        entry = reg.audit_log(device_id="pump-1", action="renew", limit=5)[0]
        assert entry.actor == "gateway:gw-1"
        assert entry.detail["session_serial"] == str(old)
        assert entry.detail["serial"] == str(new)
        assert reg.current_serials(["pump-1"]) == {"pump-1": frozenset({old, new})}
        # A connect with the old certificate again (a device that fell back) changes nothing.
        reg.record_connection_events([ConnectionEvent("pump-1", "gw-1", "connect", serial=old)])
        assert _certificates(lab, "pump-1") == [(old, None), (new, None)]
        # The connect with the new one, as the agent replays it: the old one is superseded.
        reg.record_connection_events([ConnectionEvent("pump-1", "gw-1", "connect", serial=new)])
        assert _certificates(lab, "pump-1") == [(old, "superseded"), (new, None)]
        assert reg.current_serials(["pump-1"]) == {"pump-1": frozenset({new})}
        assert old in reg.revoked_serials()
        (revoked,) = reg.audit_log(device_id="pump-1", action="certificate.revoke", limit=5)
        assert revoked.actor == "gateway:gw-1"
        assert revoked.detail == {"serial": str(old), "reason": "superseded",
                                  "superseded_by": str(new)}  # fmt: skip
    # A new key on request (a re-key through the tunnel): issued, and the device's own key.
    csr, rekey = _csr()
    again = lab.renew({**body, "serial": str(new), "csr": csr}, gateway)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "issued"
    cert = x509.load_pem_x509_certificate(again.json()["certificate"].encode())
    assert cert.public_key().public_numbers() == rekey.public_key().public_numbers()


def _refused(lab, device: str, body: dict, cert, status: int, reason: str, match: str):
    before = _certificates(lab, device) if device else None
    with lab.reg() as reg:
        last = max([e.id for e in reg.audit_log(limit=1)] or [0])
    answer = lab.renew(body, cert)
    assert answer.status_code == status, answer.text
    assert match in answer.json()["detail"]
    if device:
        assert _certificates(lab, device) == before  # nothing signed, nothing recorded
    with lab.reg() as reg:
        entries = [e for e in reg.audit_log(action="renew.refused", after_id=last, limit=10)]
    assert [(e.detail["status"], e.detail["reason"]) for e in entries] == [(status, reason)]
    return entries[0]


def test_refusals_are_audited_and_leave_nothing(lab):
    enrolled, key = lab.enroll("pump-2")
    serial = str(_serial(enrolled))
    with lab.reg() as reg:
        reg.record_connect("pump-2", "gw-1")
    gateway = lab.client_cert("gw-1", "renewal-client")
    csr, _ = _csr(key)
    body = {"device": "pump-2", "customer": "acme", "serial": serial, "csr": csr}
    # Not from a gateway: no client certificate, a device's, the API's tunnel client's.
    entry = _refused(lab, "pump-2", body, None, 401, "gateway", "renewal client certificate")
    assert entry.actor == "anonymous" and entry.device_id == "pump-2"
    device_cert = (lab.work / "device.crt", lab.work / "device.key")
    device_cert[0].write_text(enrolled["certificate"])
    device_cert[1].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))  # fmt: skip
    _refused(lab, "pump-2", body, tuple(map(str, device_cert)), 403, "gateway", "is not a gateway")
    tunnel = lab.client_cert("cloud-api", "tunnel-client")
    _refused(lab, "pump-2", body, tunnel, 403, "gateway", "'cloud-api' is not a gateway")
    # Plain HTTP carries no certificate at all.
    plain = httpx.post(f"{lab.base}/v1/renewals", json=body, timeout=15)
    assert plain.status_code == 401, plain.text
    # A CSR naming another device; a serial that is not the device's; another gateway's device.
    other, _ = _csr(key, [(NameOID.COMMON_NAME, "pump-1")])
    entry = _refused(lab, "pump-2", {**body, "csr": other}, gateway, 422, "csr", "pump-1")
    assert entry.actor == "gateway:gw-1"
    _refused(lab, "pump-2", {**body, "serial": "12345"}, gateway, 409, "serial", "12345")
    gw2 = lab.client_cert("gw-2", "renewal-client")
    _refused(lab, "pump-2", body, gw2, 503, "not_connected", "'gw-2'")
    _refused(lab, "", {**body, "device": "nobody"}, gateway, 404, "device", "'nobody'")
    _refused(lab, "", {**body, "customer": "globex"}, gateway, 409, "device", "'globex'")
    # A revoked device: refused even while the registry still shows it connected.
    with lab.reg() as reg:
        reg.revoke_device("acme", "pump-2", actor="test")
    _refused(lab, "pump-2", body, gateway, 409, "device", "revoked")

"""POST /v1/enroll and /v1/provisioning-tokens against the real API process and PostgreSQL.

The API runs as a login of the API's own group role (migration 0007/0008 grants), with a real
CA and tls-crypt-v2 server key; every refusal is checked to leave the registry as it was and
to land in the audit log.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from psycopg.conninfo import conninfo_to_dict

from iotistic_vpn import enroll_client, pki
from iotistic_vpn.errors import NotFound
from iotistic_vpn.pki import tlscrypt
from iotistic_vpn.registry import Certificate, Registry
from tests.support.loopback_api import api_login, free_port, loopback_api
from tests.support.loopback_api import make_csr as _csr

pytestmark = pytest.mark.postgres

LATER = datetime.now(UTC) + timedelta(days=7)
TOKEN_BURST = 8


class Lab:
    def __init__(self, base: str, dsn: str, operator: str, work, env=None) -> None:
        self.base, self.dsn, self.operator, self.work = base, dsn, operator, work
        self.env = env

    def token(self, customer="acme", max_uses=1, pattern=None, expires_at=LATER) -> str:
        with Registry(self.dsn) as reg:
            _, issued = reg.ensure_provisioning_token(
                customer, f"t-{uuid.uuid4().hex[:8]}", actor="test", expires_at=expires_at,
                max_uses=max_uses, device_pattern=pattern,
            )  # fmt: skip
        return issued.value

    def enroll(self, token: str | None, source: str | None = None, **body) -> httpx.Response:
        """POST /v1/enroll from `source` (a fresh address unless given, so that tests do not
        share the per-source bucket): loopback is uvicorn's trusted proxy."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["X-Forwarded-For"] = (
            source or f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.9"
        )
        return httpx.post(f"{self.base}/v1/enroll", json=body, headers=headers, timeout=15)

    def reg(self) -> Registry:
        return Registry(self.dsn)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pg_server):
    work = tmp_path_factory.mktemp("enroll")
    dbname = f"enroll_{uuid.uuid4().hex[:8]}"
    with pg_server.connect() as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    dsn = pg_server.dsn_for(dbname)
    with Registry(dsn) as reg:
        reg.migrate()
        reg.ensure_customer("acme", actor="test")
        reg.ensure_customer("globex", actor="test")
        reg.provision_devices("globex", ["meter-1"], actor="test")
        _, op = reg.ensure_token("ops", customer_id=None, actor="test", read_only=False)
    pki.ensure_ca(pki.CaFiles.at(work / "ca"))
    (work / "tc.key").write_bytes(tlscrypt.generate_server_key())
    env = {
        "IOTISTIC_API_ENROLL_PKI_DIR": str(work / "ca"),
        "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(work / "tc.key"),
        "IOTISTIC_API_ENROLL_REMOTES": "gw1.example.net,gw2.example.net:1195/tcp",
        "IOTISTIC_API_ENROLL_BURST_PER_TOKEN": str(TOKEN_BURST),
        "IOTISTIC_API_ENROLL_RATE_PER_TOKEN": "0.05",
        "IOTISTIC_API_ENROLL_BURST_PER_SOURCE": "40",
        "IOTISTIC_API_ENROLL_RATE_PER_SOURCE": "0.05",
    }
    with loopback_api(work / "api", api_login(pg_server, dbname), env) as base:
        yield Lab(base, dsn, op.value, work, env)
    with pg_server.connect() as conn:
        conn.execute(f"DROP DATABASE {dbname} WITH (FORCE)")


@pytest.fixture(scope="module")
def replica(lab, pg_server):
    """A second API process on the same registry, sharing no directory with the first (as
    replicas behind a load balancer do): its own work dir and login."""
    dbname = conninfo_to_dict(lab.dsn)["dbname"]
    with loopback_api(lab.work / "replica", api_login(pg_server, dbname), lab.env) as base:
        yield Lab(base, lab.dsn, lab.operator, lab.work, lab.env)


def _audit(lab: Lab, device_id: str | None = None, action: str | None = None):
    with lab.reg() as reg:
        return reg.audit_log(device_id=device_id, action=action, limit=50)


def _uses(lab: Lab, token: str) -> int:
    with lab.reg() as reg:
        return reg.provisioning_token(token)[0].uses


def _no_device(lab: Lab, device: str) -> None:
    with lab.reg() as reg, pytest.raises(NotFound):
        reg.find_device(device)


def test_a_device_enrolls_and_gets_everything_its_tunnel_needs(lab, tmp_path):
    token = lab.token(pattern="pump-*", max_uses=3)
    csr, key = _csr()
    answer = lab.enroll(token, source="192.0.2.7", device="pump-1", csr=csr)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    with lab.reg() as reg:
        device = reg.find_device("pump-1")
    assert (body["device"], body["customer"], body["address"]) == (
        "pump-1", "acme", device.vpn_address,
    )  # fmt: skip
    assert body["remotes"] == [
        {"host": "gw1.example.net", "port": 1194, "proto": "udp"},
        {"host": "gw2.example.net", "port": 1195, "proto": "tcp"},
    ]
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert pki.device_identity(cert) == pki.DeviceIdentity("acme", "pump-1")
    assert body["not_after"] == cert.not_valid_after_utc.isoformat()
    # Verified by an independent tool against the chain the answer carries.
    (tmp_path / "chain.pem").write_text(body["ca_chain"])
    (tmp_path / "dev.crt").write_text(body["certificate"])
    verify = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "chain.pem",
                             "-purpose", "sslclient", tmp_path / "dev.crt"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The tls-crypt-v2 client key names the device, as the gateways' verify script reads it.
    client = tlscrypt.unwrap_client_key((lab.work / "tc.key").read_bytes(),
                                        body["tls_crypt_v2_key"])  # fmt: skip
    assert client.metadata == b"urn:iotistic:acme:pump-1"
    assert _uses(lab, token) == 1
    entry = _audit(lab, "pump-1", "enroll")[0]
    token_id = token.split("_")[1]
    assert (entry.token_id, entry.customer_id, entry.detail["source"]) == (
        token_id, "acme", "192.0.2.7",
    )  # fmt: skip
    assert token.split("_", 2)[2] not in str([e.detail for e in _audit(lab)])


def test_enrolling_again_keeps_the_address_and_the_certificate_and_takes_no_use(lab):
    token = lab.token(max_uses=1)
    csr, _ = _csr()
    first = lab.enroll(token, device="valve-1", csr=csr).json()
    again = lab.enroll(token, device="valve-1", csr=csr)  # the token is used up now
    assert again.status_code == 200, again.text
    assert (again.json()["address"], again.json()["certificate"]) == (
        first["address"], first["certificate"],
    )  # fmt: skip
    time.sleep(1.1)  # certificate times are whole seconds: a renewal must end later
    renewed = lab.enroll(token, device="valve-1", csr=csr, renew=True)
    assert renewed.status_code == 200 and renewed.json()["address"] == first["address"]
    assert renewed.json()["certificate"] != first["certificate"]
    assert _uses(lab, token) == 1
    # Another key for an enrolled device is a re-key: only when asked for.
    other, _ = _csr()
    refused = lab.enroll(token, device="valve-1", csr=other)
    assert refused.status_code == 409 and "send renew: true" in refused.json()["detail"]
    assert lab.enroll(token, device="valve-1", csr=first["certificate"]).status_code == 422


def _stored(lab: Lab, device: str) -> list[tuple[str | None, bool]]:
    """(PEM, revoked) of each of the device's certificates in the registry, oldest first."""
    with psycopg.connect(lab.dsn) as conn:
        return conn.execute(
            "SELECT pem, revoked_at IS NOT NULL FROM certificates WHERE device_id = %s"
            " ORDER BY not_before, created_at", (device,),
        ).fetchall()  # fmt: skip


def test_a_device_enrolled_through_one_replica_enrolls_again_through_another(lab, replica):
    token = lab.token(max_uses=1)
    csr, _ = _csr()
    first = lab.enroll(token, device="valve-9", csr=csr)
    assert first.status_code == 201, first.text
    assert _stored(lab, "valve-9") == [(first.json()["certificate"], False)]
    again = replica.enroll(token, device="valve-9", csr=csr)
    assert again.status_code == 200, again.text
    assert again.json() | {"tls_crypt_v2_key": None} == first.json() | {"tls_crypt_v2_key": None}
    refused = replica.enroll(token, device="valve-9", csr=_csr()[0])
    assert refused.status_code == 409 and "send renew: true" in refused.json()["detail"]
    time.sleep(1.1)  # certificate times are whole seconds: a renewal must end later
    renewed = replica.enroll(token, device="valve-9", csr=csr, renew=True)
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["certificate"] != first.json()["certificate"]
    # The first replica hands out the renewed certificate: the newest is the current one.
    back = lab.enroll(token, device="valve-9", csr=csr)
    assert back.status_code == 200 and back.json()["certificate"] == renewed.json()["certificate"]
    assert _stored(lab, "valve-9") == [(first.json()["certificate"], False),
                                       (renewed.json()["certificate"], False)]  # fmt: skip
    statuses = [e.detail["certificate"] for e in reversed(_audit(lab, "valve-9", "enroll"))]
    assert statuses == ["issued", "unchanged", "renewed", "unchanged"]
    assert _uses(lab, token) == 1


def test_a_device_certified_without_the_api_is_a_re_key_and_a_revoked_one_never_returns(lab):
    """The Ansible modules record no PEM: any key is a re-key. A revoked certificate is not
    the current one, so it is not handed out again."""
    token = lab.token(max_uses=2)
    with lab.reg() as reg:
        reg.provision_devices("acme", ["hmi-1"], actor="test")
        cert = pki.issue_device_cert(pki.load_issuing_ca(pki.CaFiles.at(lab.work / "ca")),
                                     "acme", "hmi-1", pki.generate_key().public_key())  # fmt: skip
        reg.record_certificate("acme", Certificate(
            cert.serial_number, "hmi-1", pki.fingerprint(cert), cert.not_valid_before_utc,
            cert.not_valid_after_utc), actor="test")  # fmt: skip
    csr, _ = _csr()
    refused = lab.enroll(token, device="hmi-1", csr=csr)
    assert refused.status_code == 409 and "send renew: true" in refused.json()["detail"]
    assert _stored(lab, "hmi-1") == [(None, False)]
    enrolled = lab.enroll(token, device="hmi-1", csr=csr, renew=True)
    assert enrolled.status_code == 200, enrolled.text
    assert _stored(lab, "hmi-1") == [(None, False), (enrolled.json()["certificate"], False)]
    new = x509.load_pem_x509_certificate(enrolled.json()["certificate"].encode())
    with lab.reg() as reg:
        reg.revoke_certificates("acme", [cert.serial_number, new.serial_number], actor="test")
    assert lab.enroll(token, device="hmi-1", csr=csr).status_code == 409
    again = lab.enroll(token, device="hmi-1", csr=csr, renew=True)
    assert again.status_code == 200, again.text
    assert again.json()["certificate"] != enrolled.json()["certificate"]
    assert _uses(lab, token) == 0


def test_a_hardware_serial_names_the_device(lab):
    answer = lab.enroll(lab.token(), serial="ABC-123", csr=_csr()[0])
    assert answer.status_code == 201 and answer.json()["device"] == "sn-abc-123"


def _refusals(lab: Lab) -> dict:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    used = lab.token()
    assert lab.enroll(used, device=f"used-{uuid.uuid4().hex[:6]}", csr=_csr()[0]).status_code == 201
    revoked = lab.token()
    with lab.reg() as reg:
        reg.revoke_provisioning_token(revoked.split("_")[1], actor="test")
        _, expiring = reg.ensure_provisioning_token(
            "acme", f"exp-{uuid.uuid4().hex[:6]}", actor="t", expires_at=LATER
        )
    with psycopg.connect(lab.dsn) as conn:
        conn.execute("UPDATE provisioning_tokens SET expires_at = now() WHERE id = %s",
                     (expiring.id,))  # fmt: skip
    csr = _csr()[0]
    return {
        "unknown": (lab.token()[:-4] + "AAAA", {"csr": csr}, 401, "a valid provisioning token"),
        "none": (None, {"csr": csr}, 401, "a valid provisioning token"),
        "api token": (lab.operator, {"csr": csr}, 401, "a valid provisioning token"),
        "revoked": (revoked, {"csr": csr}, 401, "is revoked"),
        "expired": (expiring.value, {"csr": csr}, 401, "expired at"),
        "used up": (used, {"csr": csr}, 401, "is used up (1 uses)"),
        "pattern": (lab.token(pattern="pump-*"), {"csr": csr}, 403,
                    "does not match pattern 'pump-*'"),
        "other customer": (lab.token(), {"csr": csr, "device": "meter-1"}, 409,
                           "'meter-1' is enrolled by another customer"),
        "malformed": (lab.token(), {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAA=="}, 422,
                      "malformed certificate request"),
        "weak key": (lab.token(), {"csr": _csr(weak)[0]}, 422, "RSA-1024 is too weak"),
        "other identity": (lab.token(), {"csr": _csr(subject=[(NameOID.COMMON_NAME, "pump-9")])[0]},
                           422, "asks for another identity"),
        "bad id": (lab.token(), {"csr": csr, "device": "Bad_Id"}, 422,
                   "invalid device id 'Bad_Id'"),
    }  # fmt: skip


REFUSALS = ["unknown", "none", "api token", "revoked", "expired", "used up", "pattern",
            "other customer", "malformed", "weak key", "other identity", "bad id"]  # fmt: skip


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refusal_names_the_bad_value_and_leaves_nothing(lab, case):
    token, body, status, message = _refusals(lab)[case]
    device = body.pop("device", f"ref-{uuid.uuid4().hex[:6]}")
    uses = _uses(lab, token) if token and token.startswith("ivpp_") and case != "unknown" else 0
    answer = lab.enroll(token, source="192.0.2.8", device=device, **body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    if status == 401:
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    if device not in ("meter-1", "Bad_Id"):
        _no_device(lab, device)
    if token and token.startswith("ivpp_") and case != "unknown":
        assert _uses(lab, token) == uses
    refused = [
        e for e in _audit(lab, action="enroll.refused") if e.detail["asked"]["device"] == device
    ]
    assert refused and refused[0].detail["status"] == status
    assert refused[0].detail["source"] == "192.0.2.8"


def test_two_enrollments_racing_for_the_last_use_one_wins(lab):
    token = lab.token(max_uses=1)
    answers, barrier = {}, threading.Barrier(2)

    def go(device: str) -> None:
        csr = _csr()[0]
        barrier.wait()
        answers[device] = lab.enroll(token, device=device, csr=csr).status_code

    threads = [threading.Thread(target=go, args=(d,)) for d in ("race-a", "race-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers.values()) == [201, 401]
    loser = next(d for d, s in answers.items() if s == 401)
    _no_device(lab, loser)
    assert _uses(lab, token) == 1


def test_enrollments_are_rate_limited_per_token_and_per_source(lab):
    token = lab.token(max_uses=100)
    statuses = [lab.enroll(token, source="198.51.100.1", device="x", csr="bad").status_code
                for _ in range(TOKEN_BURST + 1)]  # fmt: skip
    assert statuses == [422] * TOKEN_BURST + [429]
    limited = lab.enroll(token, source="198.51.100.2", device="x", csr="bad")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    # One source, many tokens: its own bucket.
    source = [lab.enroll(None, source="203.0.113.5", csr="x").status_code for _ in range(41)]
    assert source == [401] * 40 + [429]
    assert "203.0.113.5" in lab.enroll(lab.token(), source="203.0.113.5", csr="x").json()["detail"]
    entry = _audit(lab, action="enroll.refused")[0]
    assert (entry.detail["status"], entry.detail["source"]) == (429, "203.0.113.5")


def test_provisioning_tokens_through_the_api_for_operators_and_a_customers_admin(lab):
    with Registry(lab.dsn) as reg:
        _, admin = reg.ensure_token("admin", customer_id="acme", actor="t", read_only=False)
        _, viewer = reg.ensure_token("viewer", customer_id="acme", actor="t")
    url = f"{lab.base}/v1/provisioning-tokens"

    def call(method, token, path="", **kw):
        return httpx.request(method, url + path, headers={"Authorization": f"Bearer {token}"},
                             timeout=10, **kw)  # fmt: skip

    body = {"name": "factory", "expires_at": LATER.isoformat(), "max_uses": 10,
            "device_pattern": "line-?"}  # fmt: skip
    made = call("POST", admin.value, json=body)
    assert made.status_code == 201 and made.json()["token"].startswith("ivpp_")
    assert made.json()["customer"] == "acme"
    again = call("POST", admin.value, json=body)
    assert again.status_code == 200 and again.json()["token"] is None
    assert call("POST", admin.value, json={**body, "customer": "globex"}).status_code == 403
    assert call("POST", viewer.value, json=body).status_code == 403
    assert call("POST", lab.operator, json=body).status_code == 400  # which customer?
    theirs = call("POST", lab.operator, json={**body, "customer": "globex"}).json()
    assert {t["customer"] for t in call("GET", admin.value).json()} == {"acme"}
    assert call("DELETE", admin.value, f"/{theirs['id']}").status_code == 404
    enrolled = lab.enroll(made.json()["token"], device="line-1", csr=_csr()[0])
    assert enrolled.status_code == 201
    revoked = call("DELETE", admin.value, f"/{made.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert lab.enroll(made.json()["token"], device="line-2", csr=_csr()[0]).status_code == 401


def test_without_its_pki_enrollment_is_off_and_says_so(lab, pg_server):
    with loopback_api(lab.work / "off", lab.dsn) as base:
        assert httpx.get(f"{base}/healthz").json()["enrollment"] is False
        answer = httpx.post(f"{base}/v1/enroll", json={"device": "pump-2", "csr": "x"})
    assert answer.status_code == 503
    assert "enrollment is off" in answer.json()["detail"]
    assert httpx.get(f"{lab.base}/healthz").json()["enrollment"] is True


# -- the device's client (iotistic-vpn-enroll) as a subprocess -----------------------------------


def _client(lab: Lab, tmp_path, token: str, api: str | None = None, **settings):
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    env = {"PATH": os.environ["PATH"], "IOTISTIC_ENROLL_CONFIG": str(tmp_path / "none.conf"),
           "IOTISTIC_ENROLL_API_URL": api or lab.base,
           "IOTISTIC_ENROLL_TOKEN_FILE": str(token_file),
           "IOTISTIC_ENROLL_PKI_DIR": str(tmp_path / "pki"),
           "IOTISTIC_ENROLL_BACKOFF_BASE_S": "0.2", "IOTISTIC_ENROLL_BACKOFF_CAP_S": "1",
           **{f"IOTISTIC_ENROLL_{k}": v for k, v in settings.items()}}  # fmt: skip
    # Run as a script from its own file, as a device runs its copy: no package on the path.
    return subprocess.Popen([sys.executable, "-I", enroll_client.__file__], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(proc, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_the_client_enrolls_writes_its_files_0600_and_then_does_nothing(lab, tmp_path):
    token = lab.token(max_uses=1)
    code, out, err = _finish(_client(lab, tmp_path, token, DEVICE_ID="cli-1"))
    assert code == 0, out + err
    assert "enrolled: acme/cli-1" in out
    pki_dir = tmp_path / "pki"
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in pki_dir.iterdir()}
    assert files == dict.fromkeys(["device.key", "device.crt", "ca.pem", "tls-crypt-v2.key",
                                   "remotes.conf", "enrollment.json"], 0o600)  # fmt: skip
    assert (pki_dir / "remotes.conf").read_text() == (
        "remote gw1.example.net 1194 udp\nremote gw2.example.net 1195 tcp\n"
    )
    # The certificate holds the key made on the device (which never left it).
    key = serialization.load_pem_private_key((pki_dir / "device.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((pki_dir / "device.crt").read_bytes())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    verify = subprocess.run(["openssl", "verify", "-CAfile", pki_dir / "ca.pem",
                             pki_dir / "device.crt"], capture_output=True, check=False)  # fmt: skip
    assert verify.returncode == 0
    with lab.reg() as reg:
        assert (
            reg.find_device("cli-1").vpn_address
            == (__import__("json").loads((pki_dir / "enrollment.json").read_text())["address"])
        )
    before = {p.name: p.stat().st_mtime_ns for p in pki_dir.iterdir()}
    code, out, _ = _finish(_client(lab, tmp_path, token, DEVICE_ID="cli-1"))
    assert code == 0 and "already enrolled" in out
    assert {p.name: p.stat().st_mtime_ns for p in pki_dir.iterdir()} == before
    # Inside the renewal window it renews through its tunnel, never with the token: with no
    # tunnel up it gives up (exit 1, the timer tries again), the API not asked, nothing moved.
    code, out, err = _finish(_client(lab, tmp_path, token, DEVICE_ID="cli-1",
                                     RENEW_WITHIN_DAYS="3650", MAX_ATTEMPTS="1",
                                     RENEW_URL="http://127.0.0.1:9/v1/renewal"))  # fmt: skip
    assert code == 1 and "cannot reach http://127.0.0.1:9/v1/renewal" in err, out + err
    assert {p.name: p.stat().st_mtime_ns for p in pki_dir.iterdir()} == before
    assert _uses(lab, token) == 1


def test_the_client_does_not_retry_a_refusal(lab, tmp_path):
    started = time.monotonic()
    code, out, err = _finish(_client(lab, tmp_path, lab.token(pattern="pump-*"),
                                     SERIAL="ABC"))  # fmt: skip
    assert code == 2, out + err
    assert "refused: HTTP 403: device id 'sn-abc' does not match pattern 'pump-*'" in err
    assert time.monotonic() - started < 10 and "again in" not in out


def test_the_client_retries_while_the_api_is_away(lab, tmp_path):
    port = free_port()
    proc = _client(lab, tmp_path, lab.token(), api=f"http://127.0.0.1:{port}",
                   DEVICE_ID="late-1", MAX_ATTEMPTS="40", MAX_TIME_S="60")  # fmt: skip
    time.sleep(2)
    env = {"IOTISTIC_API_ENROLL_PKI_DIR": str(lab.work / "ca"),
           "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(lab.work / "tc.key"),
           "IOTISTIC_API_ENROLL_REMOTES": "gw1.example.net"}  # fmt: skip
    with loopback_api(lab.work / "late", lab.dsn, env, port=port):
        code, out, err = _finish(proc)
    assert code == 0, out + err
    assert "cannot reach" in out and "enrolled: acme/late-1" in out


def test_the_client_gives_up_within_its_bounds(lab, tmp_path):
    started = time.monotonic()
    proc = _client(lab, tmp_path, lab.token(), api=f"http://127.0.0.1:{free_port()}",
                   DEVICE_ID="never-1", MAX_ATTEMPTS="4")  # fmt: skip
    code, _, err = _finish(proc)
    assert code == 1 and "gave up after 4 attempt(s)" in err
    assert time.monotonic() - started < 10


# -- the server-side bundle ------------------------------------------------------------------


def test_a_bundle_is_one_ovpn_with_its_own_key_audited_like_an_enrollment(lab, tmp_path):
    token = lab.token(max_uses=1)

    def post(device: str, **body) -> httpx.Response:
        return httpx.post(f"{lab.base}/v1/devices/{device}/bundle", json=body, timeout=15,
                          headers={"Authorization": f"Bearer {token}",
                                   "X-Forwarded-For": "192.0.2.77"})  # fmt: skip

    made = post("kiosk-1")
    assert made.status_code == 201, made.text
    assert made.headers["content-type"].startswith("application/x-openvpn-profile")
    ovpn = made.text
    inline = {tag: ovpn.split(f"<{tag}>\n")[1].split(f"</{tag}>")[0]
              for tag in ("ca", "cert", "key", "tls-crypt-v2")}  # fmt: skip
    key = serialization.load_pem_private_key(inline["key"].encode(), None)
    cert = x509.load_pem_x509_certificate(inline["cert"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert pki.device_identity(cert) == pki.DeviceIdentity("acme", "kiosk-1")
    assert "remote gw1.example.net 1194 udp\nremote gw2.example.net 1195 tcp\n" in ovpn
    with lab.reg() as reg:
        address = reg.find_device("kiosk-1").vpn_address
    assert address in ovpn and _uses(lab, token) == 1
    assert _stored(lab, "kiosk-1") == [(inline["cert"], False)]
    entry = _audit(lab, "kiosk-1", "enroll")[0]
    assert (entry.detail["via"], entry.detail["source"]) == ("bundle", "192.0.2.77")
    assert inline["key"].strip() not in str([e.detail for e in _audit(lab)])
    # Another bundle is another key: a re-key, only when asked for; it takes no use.
    again = post("kiosk-1")
    assert again.status_code == 409 and "send renew: true" in again.json()["detail"]
    renewed = post("kiosk-1", renew=True)
    assert renewed.status_code == 200 and address in renewed.text
    assert renewed.text.split("<key>")[1] != ovpn.split("<key>")[1]
    assert post("kiosk-2").status_code == 401  # the token's one use is spent
    _no_device(lab, "kiosk-2")


def test_a_bad_enrollment_file_stops_the_api_at_start_naming_it(lab, tmp_path):
    tunnel = lab.work / "api"  # the tunnel client files loopback_api made
    cert = pki.ensure_gateway_cert(pki.load_issuing_ca(tunnel / "tunnel-ca"), "cloud-api",
                                   tunnel / "api", purpose="tunnel-client")  # fmt: skip
    env = {**os.environ, "IOTISTIC_API_REGISTRY_DSN": lab.dsn,
           "IOTISTIC_API_TUNNEL_CERT": cert.cert_path, "IOTISTIC_API_TUNNEL_KEY": cert.key_path,
           "IOTISTIC_API_TUNNEL_CA": str(tunnel / "tunnel-ca" / pki.CA_CHAIN),
           "IOTISTIC_API_AUDIT_SPOOL": str(tmp_path / "audit.db"),
           "IOTISTIC_API_ENROLL_PKI_DIR": str(lab.work / "ca"),
           "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(tmp_path / "missing.key"),
           "IOTISTIC_API_ENROLL_REMOTES": "vpn.example.net"}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "iotistic_vpn.api", "--port", "0"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 2
    assert f"invalid enrollment file '{tmp_path / 'missing.key'}'" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"IOTISTIC_API_TLS_LISTEN": "0.0.0.0:8443"},
         "IOTISTIC_API_TLS_LISTEN needs IOTISTIC_API_TLS_CERT and _KEY"),
        ({"IOTISTIC_API_TLS_LISTEN": "8443", "IOTISTIC_API_TLS_CERT": "/x.crt",
          "IOTISTIC_API_TLS_KEY": "/x.key"},
         "IOTISTIC_API_TLS_LISTEN '8443': use HOST:PORT"),
    ],
)  # fmt: skip
def test_an_incomplete_https_listener_stops_the_api_at_start_naming_it(lab, tmp_path, tls, message):
    tunnel = lab.work / "api"
    cert = pki.ensure_gateway_cert(pki.load_issuing_ca(tunnel / "tunnel-ca"), "cloud-api",
                                   tunnel / "api", purpose="tunnel-client")  # fmt: skip
    env = {**os.environ, "IOTISTIC_API_REGISTRY_DSN": lab.dsn,
           "IOTISTIC_API_TUNNEL_CERT": cert.cert_path, "IOTISTIC_API_TUNNEL_KEY": cert.key_path,
           "IOTISTIC_API_TUNNEL_CA": str(tunnel / "tunnel-ca" / pki.CA_CHAIN),
           "IOTISTIC_API_AUDIT_SPOOL": str(tmp_path / "audit.db"), **tls}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "iotistic_vpn.api", "--port", "0"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr

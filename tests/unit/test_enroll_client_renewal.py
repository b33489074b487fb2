"""iotistic-vpn-enroll's renewal through the tunnel: what a run decides to do, and the switch to
the new certificate with its way back, against a gateway stand-in on loopback (a real HTTP
server that signs with a real CA and says which serial the session has)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotistic_vpn import conventions, pki
from iotistic_vpn import enroll_client as ec

CHAINS: dict[int, bytes] = {}  # id(CA) -> its chain (issuing, root): what ca.pem holds


def _ca(root: Path) -> pki.IssuingCA:
    ca = pki.ensure_ca(pki.CaFiles.at(root)).ca
    CHAINS[id(ca)] = (root / pki.CA_CHAIN).read_bytes()
    return ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> pki.IssuingCA:
    return _ca(tmp_path_factory.mktemp("ca"))


def _enrolled(ca, pki_dir: Path, days: float) -> x509.Certificate:
    """A device's files as the client leaves them after an enrollment."""
    key = pki.generate_key()
    pki_dir.mkdir(mode=0o700)
    cert = pki.issue_device_cert(ca, "acme", "dev-a", key.public_key(),
                                 validity=dt.timedelta(days=days))  # fmt: skip
    ec.write_private(pki_dir / ec.KEY, pki.private_key_pem(key))
    ec.write_private(pki_dir / ec.CERT, pki.certificate_pem(cert))
    ec.write_private(pki_dir / ec.CHAIN, CHAINS[id(ca)])
    for name in (ec.TLS_CRYPT, ec.REMOTES):
        ec.write_private(pki_dir / name, b"x\n")
    ec.write_private(pki_dir / ec.STATE, b'{"device": "dev-a", "not_after": "then"}\n')
    return cert


def test_the_renewal_url_is_the_gateways_first_address_and_the_agents_port():
    first = conventions.gateway_instances(1)[0].address
    assert ec.DEFAULTS["RENEW_URL"] == (
        f"http://{first}:{conventions.RENEW_PORT}{conventions.RENEW_PATH}"
    )


def test_what_a_run_does(ca, tmp_path):
    week = 7 * 86400
    assert ec.next_step(tmp_path / "none", week) == "enroll"  # no certificate at all
    _enrolled(ca, tmp_path / "long", 365)
    assert ec.next_step(tmp_path / "long", week) == "done"
    _enrolled(ca, tmp_path / "due", 3)
    assert ec.next_step(tmp_path / "due", week) == "renew"  # never the token again
    (tmp_path / "due" / ec.REMOTES).unlink()
    assert ec.next_step(tmp_path / "due", week) == "renew"
    (tmp_path / "long" / ec.REMOTES).unlink()
    assert ec.next_step(tmp_path / "long", week) == "enroll"  # a broken enrollment, repaired


class Gateway(http.server.ThreadingHTTPServer):
    """GET: the session's serial (the old one until `switch_after_post`); POST: signs the CSR."""

    def __init__(self, ca, serial: int, switch_after_post: bool, signer=None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.ca, self.serial, self.switch = ca, serial, switch_after_post
        self.signer = signer or ca  # another CA: an impostor answering while the tunnel is down
        self.csrs: list[x509.CertificateSigningRequest] = []


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _json(self, value: dict) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json({"device": "dev-a", "customer": "acme", "serial": str(self.server.serial)})

    def do_POST(self) -> None:
        csr = x509.load_pem_x509_csr(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.csrs.append(csr)
        cert = pki.issue_device_cert(self.server.signer, "acme", "dev-a", csr.public_key())
        if self.server.switch:
            self.server.serial = cert.serial_number
        chain = CHAINS[id(self.server.ca)].decode()
        self._json({"device": "dev-a", "customer": "acme", "serial": str(cert.serial_number),
                    "certificate": pki.certificate_pem(cert).decode(), "ca_chain": chain,
                    "not_after": cert.not_valid_after_utc.isoformat()})  # fmt: skip


def _renewing(ca, tmp_path, *, switch: bool, new_key: bool = False, signer=None):
    pki_dir = tmp_path / "pki"
    old = _enrolled(ca, pki_dir, 3)
    gateway = Gateway(ca, old.serial_number, switch, signer)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    restarts = tmp_path / "restarts"
    settings = {**ec.DEFAULTS, "PKI_DIR": str(pki_dir), "RENEW_WITHIN_DAYS": "30",
                "RENEW_URL": f"http://127.0.0.1:{gateway.server_port}/v1/renewal",
                "RENEW_NEW_KEY": "1" if new_key else "0", "TUNNEL_UP_TIMEOUT_S": "2",
                "TUNNEL_RESTART": f"sh -c 'echo x >> {restarts}'", "MAX_ATTEMPTS": "2"}  # fmt: skip
    return pki_dir, old, gateway, settings, restarts


def _key_numbers(path: Path):
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    return key.public_key().public_numbers()


@pytest.mark.parametrize("new_key", [False, True])
def test_a_renewal_installs_the_new_certificate_once_the_tunnel_shows_it(ca, tmp_path, new_key):
    pki_dir, old, gateway, settings, restarts = _renewing(ca, tmp_path, switch=True,
                                                          new_key=new_key)  # fmt: skip
    old_key = _key_numbers(pki_dir / ec.KEY)
    try:
        assert ec.run(settings, log=lambda *_: None) == ec.EXIT_DONE
    finally:
        gateway.shutdown()
    cert = x509.load_pem_x509_certificate((pki_dir / ec.CERT).read_bytes())
    assert cert.serial_number == gateway.serial != old.serial_number
    assert (_key_numbers(pki_dir / ec.KEY) == old_key) is not new_key
    assert cert.public_key().public_numbers() == _key_numbers(pki_dir / ec.KEY)
    assert gateway.csrs[0].public_key().public_numbers() == _key_numbers(pki_dir / ec.KEY)
    assert restarts.read_text() == "x\n"
    assert json.loads((pki_dir / ec.STATE).read_text())["not_after"] != "then"
    # Nothing left behind, every file the owner's alone.
    names = sorted(p.name for p in pki_dir.iterdir())
    assert names == sorted([ec.KEY, ec.CERT, ec.CHAIN, ec.TLS_CRYPT, ec.REMOTES, ec.STATE])
    assert {stat.S_IMODE(p.stat().st_mode) for p in pki_dir.iterdir()} == {0o600}


@pytest.mark.parametrize("new_key", [False, True])
def test_a_tunnel_that_does_not_come_up_goes_back_to_the_old_certificate(ca, tmp_path, new_key):
    pki_dir, old, gateway, settings, restarts = _renewing(ca, tmp_path, switch=False,
                                                          new_key=new_key)  # fmt: skip
    before = {n: (pki_dir / n).read_bytes() for n in (ec.KEY, ec.CERT)}
    try:
        with pytest.raises(ec.Temporary, match=f"back on certificate {old.serial_number}"):
            ec.run(settings, log=lambda *_: None)
    finally:
        gateway.shutdown()
    assert {n: (pki_dir / n).read_bytes() for n in (ec.KEY, ec.CERT)} == before
    assert restarts.read_text() == "x\nx\n"  # onto the new one, then back onto the old one
    assert not list(pki_dir.glob("*.old")) and not list(pki_dir.glob("*.new"))


def test_an_answer_from_anyone_but_the_ca_is_not_installed(ca, tmp_path):
    other = _ca(tmp_path / "other")
    pki_dir, _, gateway, settings, restarts = _renewing(ca, tmp_path, switch=True, signer=other)
    before = {p.name: p.read_bytes() for p in pki_dir.iterdir()}
    try:
        with pytest.raises(ec.Refused, match="not a certificate of this device's CA"):
            ec.run(settings, log=lambda *_: None)
    finally:
        gateway.shutdown()
    assert {p.name: p.read_bytes() for p in pki_dir.iterdir()} == before
    assert not restarts.exists()


def test_no_tunnel_no_renewal(ca, tmp_path):
    pki_dir = tmp_path / "pki"
    _enrolled(ca, pki_dir, 3)
    before = (pki_dir / ec.CERT).read_bytes()
    settings = {**ec.DEFAULTS, "PKI_DIR": str(pki_dir), "RENEW_URL": "http://127.0.0.1:9/x",
                "MAX_ATTEMPTS": "2", "BACKOFF_BASE_S": "0.01"}  # fmt: skip
    with pytest.raises(ec.Temporary, match=re.escape("cannot reach http://127.0.0.1:9/x")):
        ec.run(settings, log=lambda *_: None)
    assert (pki_dir / ec.CERT).read_bytes() == before

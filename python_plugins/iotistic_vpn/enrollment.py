"""Zero-touch enrollment: a device presents a provisioning token and its CSR, and gets back
its certificate, the CA chain, a tls-crypt-v2 client key naming it and the gateways' remotes.

The registry is the one home of what was issued: the device's current certificate and its
PEM are read from it (so every replica of the API answers alike), and the token's use, the
device (a stable address) and the certificate with its PEM are written in one transaction: a
refusal or a failure leaves nothing, and gives the use back. Rules (docs/enrollment.md):

- The CSR's signature and key strength are checked, and a subject or SAN naming another
  device or customer is refused (elsewhere the CA only overrides it; a device asking for
  itself has no reason to name anyone else).
- A new device takes one use of the token. Enrolling again a device of the same customer
  takes none (a device retrying after a lost answer must not be locked out by a token whose
  last use it spent) but needs the token live; it keeps its address and certificate, and
  gets a new certificate only inside the renewal window or with `renew`. A CSR with another
  key than the device's current certificate is a re-key: refused without `renew`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from . import conventions, pki, tlsverify, validation
from .errors import InvalidValue, IotisticVpnError
from .pki import tlscrypt
from .registry import (
    Certificate,
    EnrollmentTarget,
    ProvisioningToken,
    Registry,
    RegistryConflict,
)

__all__ = [
    "Enrolled",
    "EnrollmentPki",
    "EnrollmentRefused",
    "EnrollmentRequest",
    "Remote",
    "asked_for",
    "device_id_for",
    "enroll",
    "handle",
    "parse_remotes",
]

SERIAL_PREFIX = "sn-"
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,59}")
_PROTOS = ("udp", "tcp")


class EnrollmentRefused(IotisticVpnError):
    """An enrollment refused: the HTTP status, a short reason code and the message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(message)


@dataclass(frozen=True)
class Remote:
    host: str
    port: int = conventions.OPENVPN_PORT
    proto: str = "udp"

    def as_dict(self) -> dict:
        return {"host": self.host, "port": self.port, "proto": self.proto}


def parse_remotes(text: str) -> tuple[Remote, ...]:
    """Remotes from "host[:port[/proto]],..." (e.g. "vpn.example.net:1194/udp"), else
    InvalidValue naming the bad item."""
    out = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        match = re.fullmatch(r"([A-Za-z0-9.-]{1,253})(?::(\d{1,5}))?(?:/([a-z]+))?", item)
        port = int(match.group(2)) if match and match.group(2) else conventions.OPENVPN_PORT
        proto = (match.group(3) if match else None) or "udp"
        if match is None or not 0 < port < 65536 or proto not in _PROTOS:
            raise InvalidValue("remote", item, "use host[:port[/udp|tcp]], e.g. vpn.example.net")
        out.append(Remote(match.group(1), port, proto))
    if not out:
        raise InvalidValue("remotes", text, "give at least one gateway host")
    return tuple(out)


@dataclass(frozen=True)
class EnrollmentPki:
    """What signing needs, read once at start: the issuing CA, its chain, the tls-crypt-v2
    server key and the remotes."""

    ca: pki.IssuingCA
    chain_pem: bytes
    server_key: bytes
    remotes: tuple[Remote, ...]
    validity: dt.timedelta = pki.DEVICE_VALIDITY
    renew_within: dt.timedelta = pki.RENEW_WITHIN

    @classmethod
    def load(
        cls,
        pki_dir: str | os.PathLike,
        server_key: str | os.PathLike,
        remotes: str,
        passphrase_file: str | os.PathLike | None = None,
    ) -> EnrollmentPki:
        """Read and check everything; InvalidValue names the missing or bad file."""
        passphrase = None
        if passphrase_file:
            try:
                passphrase = Path(passphrase_file).read_text().strip()
            except OSError as exc:
                raise InvalidValue("CA passphrase file", str(passphrase_file),
                                   exc.strerror) from None  # fmt: skip
        files = pki.CaFiles.at(pki_dir)
        ca = pki.load_issuing_ca(files, passphrase)
        try:
            chain = files.chain.read_bytes()
            key = Path(server_key).read_bytes()
        except OSError as exc:
            raise InvalidValue("enrollment file", exc.filename, exc.strerror) from None
        tlscrypt.generate_client_key(key, b"check")  # a bad server key fails here, not later
        return cls(ca, chain, key, parse_remotes(remotes))


@dataclass(frozen=True)
class EnrollmentRequest:
    device: str | None
    serial: str | None
    csr: str
    renew: bool = False


@dataclass
class Enrolled:
    """What the device gets back (and whether this made it or found it)."""

    device: str
    customer: str
    address: str
    certificate: str
    ca_chain: str
    tls_crypt_v2_key: str = field(repr=False)
    remotes: list[dict]
    not_after: str
    serial: str
    created: bool  # a new device (201), else a re-enroll (200)
    status: str  # the certificate: issued, renewed or unchanged

    def answer(self) -> dict:
        keys = ("device", "customer", "address", "certificate", "ca_chain", "tls_crypt_v2_key",
                "remotes", "not_after")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


def device_id_for(device: str | None, serial: str | None) -> str:
    """The device id asked for: given, or derived from a hardware serial (sn-<serial>)."""
    if (device is None) == (serial is None):
        raise EnrollmentRefused(422, "device", "give exactly one of device and serial")
    if device is not None:
        return _valid(lambda: validation.device_id(device))
    if not isinstance(serial, str) or not _SERIAL_RE.fullmatch(serial):
        raise EnrollmentRefused(
            422, "serial", f"invalid serial {serial!r}: use 1-60 letters, digits and hyphens"
        )
    return _valid(lambda: validation.device_id(SERIAL_PREFIX + serial.lower()))


def _valid(check):
    try:
        return check()
    except InvalidValue as exc:
        raise EnrollmentRefused(422, "device", str(exc)) from None


def check_token(looked: tuple[ProvisioningToken, dt.datetime] | None) -> ProvisioningToken:
    """The presented token if it is live (revoked and expired refused; uses are counted
    later, only for a new device)."""
    if looked is None:
        raise EnrollmentRefused(401, "token", "a valid provisioning token is required")
    token, now = looked
    if token.revoked_at is not None:
        raise EnrollmentRefused(401, "token", f"provisioning token {token.id} is revoked")
    if now >= token.expires_at:
        raise EnrollmentRefused(
            401, "token", f"provisioning token {token.id} expired at {token.expires_at:%FT%TZ}"
        )
    return token


def check_request(token: ProvisioningToken, req: EnrollmentRequest) -> tuple[str, bytes]:
    """(device id, CSR PEM) once the id fits the token and the CSR is sound, else refused."""
    device = device_id_for(req.device, req.serial)
    if not token.admits(device):
        raise EnrollmentRefused(
            403, "device",
            f"device id {device!r} does not match pattern {token.device_pattern!r} of"
            f" provisioning token {token.id}",
        )  # fmt: skip
    csr_pem = req.csr.encode() if isinstance(req.csr, str) else req.csr
    try:
        csr = pki.load_device_csr(csr_pem, token.customer_id, device)
        pki.check_csr_identity(csr, token.customer_id, device)
    except InvalidValue as exc:
        raise EnrollmentRefused(422, "csr", str(exc)) from None
    return device, csr_pem


def handle(reg: Registry, ca: EnrollmentPki, value: str | None, req: EnrollmentRequest,
           source: str | None, *, kind: str = "enroll") -> Enrolled:  # fmt: skip
    """One enrollment from the presented token string to the answer; every outcome audited
    (the token's id, never its secret; the device asked for; the source address; kind:
    enroll, the device's own CSR, or bundle, a key made on the server)."""
    token: ProvisioningToken | None = None
    device = None
    try:
        token = check_token(reg.provisioning_token(value) if value else None)
        device, csr_pem = check_request(token, req)
        return enroll(reg, ca, token, device, csr_pem, renew=req.renew, source=source, kind=kind)
    except EnrollmentRefused as exc:
        reg.record_enrollment(
            "enroll.refused", token_id=token and token.id,
            customer_id=token and token.customer_id, device_id=device,
            detail={"source": source, "status": exc.status, "reason": exc.reason,
                    "message": str(exc), "asked": asked_for(req), "via": kind},
        )  # fmt: skip
        raise


def asked_for(req: EnrollmentRequest) -> dict:
    """What the request asked for, cut short (it is whatever the client sent)."""
    return {"device": _short(req.device), "serial": _short(req.serial), "renew": req.renew}


def _short(value: object) -> str | None:
    return None if value is None else str(value)[:80]


def enroll(
    reg: Registry, ca: EnrollmentPki, token: ProvisioningToken, device: str, csr_pem: bytes,
    *, renew: bool = False, source: str | None = None, kind: str = "enroll",
) -> Enrolled:  # fmt: skip
    """Enroll (or enroll again) one checked request; refusals leave the registry as it was."""
    customer = token.customer_id
    actor = f"provisioning_token:{token.id}"
    public_key = pki.load_device_csr(csr_pem, customer, device, verify=False).public_key()
    # Forced renewal: a window as long as the validity (less the least step, the longest
    # check_validity allows) holds every certificate, even one signed a moment ago.
    window = ca.validity - dt.timedelta(microseconds=1) if renew else ca.renew_within
    with reg.transaction():
        # The customer's row lock first: enrollments of one customer queue there, so the
        # device and certificate read with it cannot race another enrollment of the same id.
        target = reg.enrollment_target(customer, device)
        found = target.device
        current = stored_certificate(target, customer, device)
        status = pki.device_cert_status(ca.ca, customer, device, public_key, current,
                                        renew_within=window, validity=ca.validity)  # fmt: skip
        if found is not None:
            _check_existing(found, customer, device)
            if status == "issued" and not renew:
                raise EnrollmentRefused(
                    409, "key",
                    f"device {device!r} is enrolled with another key: send renew: true to"
                    " replace its certificate",
                )  # fmt: skip
        elif reg.consume_provisioning_token(token.id) is None:
            raise EnrollmentRefused(
                401, "token", f"provisioning token {token.id} is used up ({token.max_uses} uses)"
            )
        try:
            held = found or reg.provision_device(customer, device, actor=actor)
            # The CSR's signature was checked with the request (check_request).
            cert, cert_pem = certificate_for(reg, ca, customer, device, public_key, status,
                                             current, target.pem, actor=actor)  # fmt: skip
        except (InvalidValue, RegistryConflict) as exc:
            raise EnrollmentRefused(409, "device", str(exc)) from None
        reg.record_enrollment(
            "enroll", token_id=token.id, customer_id=customer, device_id=device,
            detail={"source": source, "status": 201 if found is None else 200,
                    "certificate": status, "serial": str(cert.serial_number),
                    "vpn_address": held.vpn_address, "renew": renew, "via": kind},
        )  # fmt: skip
    metadata = tlsverify.identity(customer, device)  # what the gateways' verify script reads
    return Enrolled(
        device=device, customer=customer, address=held.vpn_address, certificate=cert_pem,
        ca_chain=ca.chain_pem.decode(),
        tls_crypt_v2_key=tlscrypt.generate_client_key(ca.server_key, metadata).decode(),
        remotes=[r.as_dict() for r in ca.remotes],
        not_after=cert.not_valid_after_utc.isoformat(), serial=str(cert.serial_number),
        created=found is None, status=status,
    )  # fmt: skip


def stored_certificate(target: EnrollmentTarget, customer: str, device: str):
    """The device's current certificate as the registry keeps it (None: none, or no PEM)."""
    if not target.pem:
        return None
    return pki.pem_certificate(target.pem, f"{customer}/{device}", "stored certificate of device")


def certificate_for(
    reg: Registry, ca: EnrollmentPki, customer: str, device: str, public_key, status: str,
    current, current_pem: str | None, *, actor: str,
) -> tuple[x509.Certificate, str]:  # fmt: skip
    """What the device gets, in the caller's transaction: its current certificate (and PEM)
    when status (pki.device_cert_status) is unchanged, else a new one for public_key, signed
    and recorded with its PEM. Enrollment and renewal share it."""
    if status == "unchanged":
        return current, current_pem
    cert = pki.issue_device_cert(ca.ca, customer, device, public_key, validity=ca.validity)
    pem = pki.certificate_pem(cert).decode()
    reg.record_certificates(customer, [_record(device, cert)], actor=actor,
                            pems={cert.serial_number: pem})  # fmt: skip
    return cert, pem


def _record(device: str, cert) -> Certificate:
    return Certificate(cert.serial_number, device, pki.fingerprint(cert),
                       cert.not_valid_before_utc, cert.not_valid_after_utc)  # fmt: skip


def _check_existing(existing, customer: str, device: str) -> None:
    if existing.customer_id != customer:
        # Which customer holds it is not told: the id is simply not this token's to enroll.
        raise EnrollmentRefused(409, "device", f"device id {device!r} is enrolled by another"
                                " customer")  # fmt: skip
    if existing.state == "revoked":
        raise EnrollmentRefused(
            409, "device", f"device {device!r} is revoked; a revoked device id is never reused"
        )

"""Device certificates: CN=device, O=customer, clientAuth only, identity bound by the CA."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .. import conventions, validation
from ..errors import InvalidValue
from . import pem
from .ca import IssuingCA, _leaf_facts
from .keys import (
    CLOCK_SKEW,
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    PrivateKey,
    _key_usage,
    _now,
    _ski,
    _spki,
    certificate_pem,
    check_public_key,
    fingerprint,
    generate_key,
    read_private_key,
    write_atomic,
    write_private_key,
)

DEVICE_VALIDITY = dt.timedelta(days=730)
RENEW_WITHIN = dt.timedelta(days=30)

URN_PREFIX = conventions.DEVICE_URN_PREFIX
_URN_RE = re.compile(r"urn:iotistic:([^:]+):([^:]+)")


@dataclass(frozen=True)
class DeviceIdentity:
    """Who a device certificate speaks for."""

    customer: str
    device: str

    @property
    def uri(self) -> str:
        """The SAN URI the CA writes: urn:iotistic:<customer>:<device>."""
        return device_uri(self.customer, self.device)

    def __str__(self) -> str:
        return f"{self.customer}/{self.device}"


def device_uri(customer: str, device: str) -> str:
    """The SAN URI that binds a certificate to one device of one customer."""
    return f"{URN_PREFIX}{customer}:{device}"


def load_device_csr(
    data: str | bytes, customer: str, device: str, *, verify: bool = True
) -> x509.CertificateSigningRequest:
    """Parse a device's CSR and check its signature and key strength; errors name the device.

    verify=False only parses: ensure_device_certs checks a CSR once it is about to sign it.
    """
    csr = pem.pem_csr(data, f"{customer}/{device}", "CSR of device", verify=False)
    if verify:
        _check_device_csr(csr, customer, device)
    return csr


def check_csr_identity(csr: x509.CertificateSigningRequest, customer: str, device: str) -> None:
    """Refuse a CSR whose subject or SAN asks for another identity than customer/device.

    The CA writes the identity from the registry in any case; where a device asks for itself
    (enrollment), a CSR naming someone else is a mistake or an attempt, and is refused.
    """
    label = f"{customer}/{device}"
    cn = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    org = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if any(v != device for v in cn) or any(v != customer for v in org):
        raise InvalidValue(
            "CSR of device", label,
            f"its subject {csr.subject.rfc4514_string()!r} asks for another identity",
        )  # fmt: skip
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    names = [str(n.value) for n in san]
    if any(n != device_uri(customer, device) for n in names):
        raise InvalidValue(
            "CSR of device", label, f"its subjectAltName {names} asks for another identity"
        )


def _check_device_csr(csr: x509.CertificateSigningRequest, customer: str, device: str) -> None:
    label = f"{customer}/{device}"
    pem.csr_signature(csr, label, "CSR of device")
    check_public_key(csr.public_key(), "public key of device", label)


def _leaf_builder(
    ca: IssuingCA, subject: x509.Name, public_key, validity: dt.timedelta, now: dt.datetime | None
) -> x509.CertificateBuilder:
    now = _now(now)
    # A certificate outliving its issuer would fail verification anyway: stop at the CA's end.
    not_after = min(now + validity, ca.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
    )


def issue_device_cert(
    ca: IssuingCA,
    customer: str,
    device: str,
    public_key,
    *,
    validity: dt.timedelta = DEVICE_VALIDITY,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a client certificate for customer/device; identity comes from the CA, not the CSR."""
    validation.customer_id(customer)
    validation.device_id(device)
    check_public_key(public_key, "public key of device", f"{customer}/{device}")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, customer),
            x509.NameAttribute(NameOID.COMMON_NAME, device),
        ]
    )
    builder = (
        _leaf_builder(ca, subject, public_key, validity, now)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(device_uri(customer, device))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    return builder.sign(ca.key, ca.signing_hash)


def _label(cert: x509.Certificate) -> str:
    return f"serial {cert.serial_number}"


def device_identity(cert: x509.Certificate) -> DeviceIdentity:
    """Read customer/device back from a device certificate (SAN URI, checked against CN and O)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidValue("device certificate", _label(cert), "has no subjectAltName") from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        match = _URN_RE.fullmatch(uri)
        if match:
            identity = DeviceIdentity(match.group(1), match.group(2))
            break
    else:
        raise InvalidValue("device certificate", _label(cert), f"has no {URN_PREFIX} SAN URI")
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    org = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if cn != [identity.device] or org != [identity.customer]:
        raise InvalidValue(
            "device certificate", _label(cert), f"subject does not match its SAN {identity.uri}"
        )
    return identity


def needs_renewal(
    cert: x509.Certificate, within: dt.timedelta = RENEW_WITHIN, now: dt.datetime | None = None
) -> bool:
    """True when cert expires within `within` from now (or has expired)."""
    return cert.not_valid_after_utc - _now(now) <= within


def is_issued_by(cert: x509.Certificate, ca: IssuingCA) -> bool:
    """Cheap check (names and key identifiers, no signature) that ca issued cert."""
    if cert.issuer != ca.cert.subject:
        return False
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    return aki.key_identifier == ca.key_identifier


@dataclass(frozen=True)
class DeviceRequest:
    """One device to certify: from its CSR (PEM) or with a key made here (generate_key)."""

    customer: str
    device: str
    csr: str | bytes | None = None
    generate_key: bool = False
    key_type: str = DEFAULT_KEY_TYPE

    @classmethod
    def from_mapping(cls, item: dict) -> DeviceRequest:
        """Build a request from {customer, device, csr | csr_path | generate_key, key_type}."""
        label = f"{item.get('customer')}/{item.get('device')}"
        sources = [k for k in ("csr", "csr_path", "generate_key") if item.get(k)]
        if len(sources) != 1:
            raise InvalidValue("device", label, "give exactly one of csr, csr_path, generate_key")
        csr = item.get("csr")
        if item.get("csr_path"):
            try:
                csr = Path(item["csr_path"]).expanduser().read_bytes()
            except OSError as exc:
                raise InvalidValue("csr_path", item["csr_path"], exc.strerror) from None
        return cls(
            item.get("customer"),
            item.get("device"),
            csr,
            generate_key=bool(item.get("generate_key")),
            key_type=item.get("key_type") or DEFAULT_KEY_TYPE,
        )


@dataclass
class DeviceResult:
    """The certificate a device has after ensure_device_certs, and how it got it."""

    customer: str
    device: str
    cert_path: str
    key_path: str | None
    status: str  # "issued", "renewed" or "unchanged"
    serial: str
    not_before: str
    not_after: str
    fingerprint: str
    before: dict | None = None  # facts of the certificate that was replaced
    # What write_device_certs still has to put on disk: (cert PEM, new key or None).
    pending: tuple[bytes, PrivateKey | None] | None = field(default=None, repr=False)

    def facts(self) -> dict:
        """Non-secret facts for results and diffs (what the registry records)."""
        return {
            "serial": self.serial,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "fingerprint": self.fingerprint,
        }


def _read_existing_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None  # absent or unreadable: it is replaced by a fresh one


def ensure_device_certs(
    ca: IssuingCA,
    requests: Iterable[DeviceRequest],
    dest: str | os.PathLike,
    *,
    renew_within: dt.timedelta = RENEW_WITHIN,
    validity: dt.timedelta = DEVICE_VALIDITY,
    write: bool = True,
    now: dt.datetime | None = None,
) -> list[DeviceResult]:
    """Give every requested device a valid certificate at <dest>/<customer>/<device>.crt.

    A device whose certificate already binds the requested key, identity and CA, and is not
    due for renewal, is left untouched. Renewal signs the same key again and does not revoke
    the old certificate: it stays valid until the device uses the new one.
    """
    dest = Path(dest)
    now = _now(now)
    requests = list(requests)
    _check_batch(requests)
    check_validity(validity, renew_within)
    results = []
    # Everything is checked and signed before the first write: one bad CSR changes nothing.
    for req in requests:
        cert_path = dest / req.customer / f"{req.device}.crt"
        key_path = dest / req.customer / f"{req.device}.key" if req.generate_key else None
        new_key, csr = None, None
        if req.generate_key:
            public_key, new_key = _central_key(key_path, req.key_type)
        elif req.csr is not None:
            csr = load_device_csr(req.csr, req.customer, req.device, verify=False)
            public_key = csr.public_key()
        else:
            raise InvalidValue(
                "device request", f"{req.customer}/{req.device}", "give a CSR or generate_key: true"
            )
        old = _read_existing_cert(cert_path)
        status = device_cert_status(
            ca, req.customer, req.device, public_key, old, renew_within=renew_within,
            validity=validity, now=now,
        )  # fmt: skip
        if status == "unchanged":
            # This key already holds a certificate for this identity from this CA: nothing is
            # signed, so the CSR's signature (about 0.1 ms each) need not be checked again.
            cert = old
        else:
            if csr is not None:
                _check_device_csr(csr, req.customer, req.device)
            cert = issue_device_cert(
                ca, req.customer, req.device, public_key, validity=validity, now=now
            )
        results.append(
            DeviceResult(
                req.customer,
                req.device,
                str(cert_path),
                str(key_path) if key_path else None,
                status,
                str(cert.serial_number),
                cert.not_valid_before_utc.isoformat(),
                cert.not_valid_after_utc.isoformat(),
                fingerprint(cert),
                before=None if old is None or status == "unchanged" else _leaf_facts(old),
                pending=None if status == "unchanged" else (certificate_pem(cert), new_key),
            )
        )
    if write:
        write_device_certs(results)
    return results


def device_cert_status(
    ca: IssuingCA,
    customer: str,
    device: str,
    public_key,
    current: x509.Certificate | None,
    *,
    renew_within: dt.timedelta = RENEW_WITHIN,
    validity: dt.timedelta = DEVICE_VALIDITY,
    now: dt.datetime | None = None,
) -> str:
    """What customer/device needs for public_key, given its current certificate: "issued",
    "renewed" (the same key, due) or "unchanged"; wherever that certificate is kept."""
    check_validity(validity, renew_within)
    identity = DeviceIdentity(customer, device)
    return _status(
        current, ca, public_key, lambda c: _identity_or_none(c) == identity, renew_within,
        validity, _now(now),
    )  # fmt: skip


def write_device_certs(results: Iterable[DeviceResult]) -> None:
    """Put on disk what ensure_device_certs(write=False) signed; each file replaced atomically."""
    for result in results:
        if result.pending is None:
            continue
        pem, new_key = result.pending
        if new_key is not None:
            write_private_key(result.key_path, new_key)
        # Certificates are public and re-derivable: no fsync, so 10,000 stay fast.
        write_atomic(result.cert_path, pem, sync=False)
        result.pending = None


def _check_batch(requests: Sequence[DeviceRequest]) -> None:
    seen: dict[str, str] = {}
    for req in requests:
        validation.customer_id(req.customer)
        validation.device_id(req.device)
        if req.key_type not in KEY_TYPES:
            raise InvalidValue("key type", req.key_type, f"use one of {', '.join(KEY_TYPES)}")
        # The device id is the certificate CN, and OpenVPN treats one CN as one client.
        if req.device in seen:
            raise InvalidValue(
                "device", f"{req.customer}/{req.device}", f"listed twice (also {seen[req.device]})"
            )
        seen[req.device] = f"{req.customer}/{req.device}"


def _identity_or_none(cert: x509.Certificate) -> DeviceIdentity | None:
    try:
        return device_identity(cert)
    except InvalidValue:
        return None


def _central_key(key_path: Path, key_type: str) -> tuple[object, PrivateKey | None]:
    """Public key of the key file at key_path, or of a new key (returned for writing once)."""
    # A centrally made key is written once and never rewritten: renewals reuse it.
    if key_path.exists():
        return read_private_key(key_path).public_key(), None
    new_key = generate_key(key_type)
    return new_key.public_key(), new_key


def check_validity(validity: dt.timedelta, renew_within: dt.timedelta) -> None:
    """Refuse a validity/renewal pair that would re-sign on every run."""
    if validity <= dt.timedelta(0):
        raise InvalidValue("validity", f"{validity.days} days", "must be positive")
    if renew_within >= validity:
        raise InvalidValue(
            "renewal window", f"{renew_within.days} days",
            f"must be shorter than the validity ({validity.days} days), or every run renews",
        )  # fmt: skip


def _status(
    old: x509.Certificate | None,
    ca: IssuingCA,
    public_key,
    same_identity: Callable[[x509.Certificate], bool],
    renew_within: dt.timedelta,
    validity: dt.timedelta,
    now: dt.datetime,
) -> str:
    """ "issued" unless old binds this key and identity under this CA; then renewed/unchanged."""
    if (
        old is None
        or not is_issued_by(old, ca)
        or _spki(old.public_key()) != _spki(public_key)
        or not same_identity(old)
    ):
        return "issued"
    # Near the issuing CA's own end a renewal cannot outlive the old certificate: re-signing
    # then would only spend serials (and trip the registry's two-valid-certificates rule).
    renewal_ends = min(now + validity, ca.cert.not_valid_after_utc)
    if needs_renewal(old, renew_within, now) and renewal_ends > old.not_valid_after_utc:
        return "renewed"
    return "unchanged"

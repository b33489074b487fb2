"""Service certificates: gateways (serverAuth only, so a device never poses as a gateway), the
cloud API's tunnel client (clientAuth plus the tunnel EKU, which no device carries) and a
gateway's renewal client (clientAuth plus the renewal EKU: what it calls POST /v1/renewals with)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..conventions import RENEWAL_CLIENT_EKU, TUNNEL_CLIENT_EKU, TUNNEL_CLIENT_ORGANIZATION
from ..errors import InvalidValue
from .ca import IssuingCA, _leaf_facts
from .device import (
    RENEW_WITHIN,
    _central_key,
    _leaf_builder,
    _read_existing_cert,
    _status,
    check_validity,
)
from .keys import (
    DEFAULT_KEY_TYPE,
    _now,
    certificate_pem,
    check_public_key,
    fingerprint,
    write_atomic,
    write_private_key,
)

GATEWAY_VALIDITY = dt.timedelta(days=365)
# What each kind of service certificate may be used for (dotted OIDs: cryptography before 39
# cannot hold a 128-bit arc, so the objects are made when a certificate is).
PURPOSES = {
    "gateway": (ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,),
    "tunnel-client": (ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string, TUNNEL_CLIENT_EKU),
    "renewal-client": (ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string, RENEWAL_CLIENT_EKU),
}
_DNS_NAME_RE = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


def _dns_names(names: Sequence[str], gateway: str) -> list[str]:
    if not names:
        raise InvalidValue("DNS names of gateway", gateway, "give at least one")
    for name in names:
        if not isinstance(name, str) or not _DNS_NAME_RE.fullmatch(name):
            raise InvalidValue("DNS name", name, "use lower-case DNS labels separated by dots")
    return list(names)


def issue_gateway_cert(
    ca: IssuingCA,
    name: str,
    dns_names: Sequence[str],
    public_key,
    *,
    validity: dt.timedelta = GATEWAY_VALIDITY,
    purpose: str = "gateway",
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a service certificate: SAN DNS names, the purpose's extended key usages only."""
    ekus = _purpose(purpose)
    _dns_names([name], name)
    dns_names = _dns_names(dns_names, name)
    check_public_key(public_key, "public key of gateway", name)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if purpose == "tunnel-client":
        subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, TUNNEL_CLIENT_ORGANIZATION))
    builder = (
        _leaf_builder(ca, x509.Name(subject), public_key, validity, now)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    )
    return builder.sign(ca.key, ca.signing_hash)


def _purpose(purpose: str) -> tuple[x509.ObjectIdentifier, ...]:
    if purpose not in PURPOSES:
        raise InvalidValue("certificate purpose", purpose, f"use one of {', '.join(PURPOSES)}")
    try:
        return tuple(x509.ObjectIdentifier(oid) for oid in PURPOSES[purpose])
    except ValueError:
        raise InvalidValue(
            "certificate purpose", purpose, "needs cryptography >= 39 (a 2.25 UUID OID)"
        ) from None


def certificate_purposes(cert: x509.Certificate) -> tuple[x509.ObjectIdentifier, ...]:
    """The certificate's extended key usages (empty when it has none)."""
    try:
        return tuple(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return ()


@dataclass
class GatewayResult:
    """The gateway's certificate and key after ensure_gateway_cert."""

    name: str
    cert_path: str
    key_path: str
    status: str  # "issued", "renewed" or "unchanged"
    serial: str
    not_after: str
    fingerprint: str
    dns_names: list[str]
    before: dict | None = None

    def facts(self) -> dict:
        """Non-secret facts for results and diffs."""
        return {
            "serial": self.serial,
            "not_after": self.not_after,
            "fingerprint": self.fingerprint,
            "dns_names": self.dns_names,
        }


def ensure_gateway_cert(
    ca: IssuingCA,
    name: str,
    dest: str | os.PathLike,
    *,
    dns_names: Sequence[str] | None = None,
    key_type: str = DEFAULT_KEY_TYPE,
    renew_within: dt.timedelta = RENEW_WITHIN,
    validity: dt.timedelta = GATEWAY_VALIDITY,
    purpose: str = "gateway",
    write: bool = True,
    now: dt.datetime | None = None,
) -> GatewayResult:
    """Give a service its certificate at <dest>/<name>.crt with its key (0600) beside it."""
    ekus = _purpose(purpose)
    now = _now(now)
    dns_names = _dns_names(list(dns_names or [name]), name)
    check_validity(validity, renew_within)
    dest = Path(dest)
    cert_path, key_path = dest / f"{name}.crt", dest / f"{name}.key"
    public_key, new_key = _central_key(key_path, key_type)
    old = _read_existing_cert(cert_path)
    status = _status(
        old,
        ca,
        public_key,
        lambda c: gateway_dns_names(c) == dns_names and certificate_purposes(c) == ekus,
        renew_within,
        validity,
        now,
    )
    cert = old
    if status != "unchanged":
        cert = issue_gateway_cert(
            ca, name, dns_names, public_key, validity=validity, purpose=purpose, now=now
        )
        if write:
            if new_key is not None:
                write_private_key(key_path, new_key)
            write_atomic(cert_path, certificate_pem(cert))
    before = None
    if old is not None and status != "unchanged":
        before = {**_leaf_facts(old), "dns_names": gateway_dns_names(old)}
    return GatewayResult(
        name,
        str(cert_path),
        str(key_path),
        status,
        str(cert.serial_number),
        cert.not_valid_after_utc.isoformat(),
        fingerprint(cert),
        dns_names,
        before,
    )


def gateway_dns_names(cert: x509.Certificate) -> list[str]:
    """The SAN DNS names of a certificate ([] when it has none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)

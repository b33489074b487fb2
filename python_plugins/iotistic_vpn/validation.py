"""Input validation, in one place: identifiers, networks and PEM material.

Identifiers follow the DNS label rules (RFC 1123) in lower case, because a device id becomes
an inventory host name, a certificate subject and a file name on the gateway: it must be safe
in all three. Every check raises InvalidValue naming the bad value and changes nothing.
"""

from __future__ import annotations

import ipaddress
import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .errors import InvalidValue

__all__ = [
    "CUSTOMER_ID_PATTERN",
    "DEVICE_ID_PATTERN",
    "csr_signature",
    "customer_id",
    "device_id",
    "ip_network",
    "pem_certificate",
    "pem_certificates",
    "pem_crl",
    "pem_csr",
    "pem_private_key",
    "serial_number",
]

# 1-63 characters, lower-case letters, digits and inner hyphens: a DNS label.
DEVICE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# Customers are shorter (2-32) so "customer/device" stays well inside X.509 name limits.
CUSTOMER_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$"

_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
_CUSTOMER_ID_RE = re.compile(CUSTOMER_ID_PATTERN)


def _identifier(field: str, value: object, regex: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(field, value, f"must be a string ({rule})")
    # fullmatch, not match: with match, "$" would also accept a trailing newline.
    if not regex.fullmatch(value):
        raise InvalidValue(field, value, rule)
    return value


def device_id(value: object) -> str:
    """Return value if it is a valid device id, else raise InvalidValue."""
    return _identifier(
        "device id",
        value,
        _DEVICE_ID_RE,
        "use 1-63 lower-case letters, digits and inner hyphens (a DNS label)",
    )


def customer_id(value: object) -> str:
    """Return value if it is a valid customer id, else raise InvalidValue."""
    return _identifier(
        "customer id",
        value,
        _CUSTOMER_ID_RE,
        "use 2-32 lower-case letters, digits and inner hyphens",
    )


def ip_network(value: object, field: str = "network") -> ipaddress.IPv4Network:
    """Parse a strict IPv4 CIDR (host bits clear), else raise InvalidValue."""
    if not isinstance(value, str | ipaddress.IPv4Network):
        raise InvalidValue(field, value, "must be an IPv4 CIDR such as 100.64.0.0/10")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise InvalidValue(field, value, f"not an IPv4 CIDR with host bits clear ({exc})") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidValue(field, value, "only IPv4 networks are supported")
    return net


# PEM material. `name` is what the message shows (a path, or "customer/device"): never the
# PEM itself, which is long and may be a secret.

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL
)


def _pem_bytes(data: object, field: str, name: str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if not isinstance(data, bytes) or b"-----BEGIN " not in data:
        raise InvalidValue(field, name, "not PEM text (no -----BEGIN line)")
    return data


def pem_certificate(data: object, name: str, field: str = "certificate") -> x509.Certificate:
    """Parse the first PEM certificate in data, else raise InvalidValue naming `name`."""
    return pem_certificates(data, name, field)[0]


def pem_certificates(data: object, name: str, field: str = "certificate") -> list[x509.Certificate]:
    """Parse every PEM certificate in data (a chain file), else raise InvalidValue."""
    blob = _pem_bytes(data, field, name)
    blocks = _PEM_CERT_RE.findall(blob)
    if not blocks:
        raise InvalidValue(field, name, "no -----BEGIN CERTIFICATE----- block")
    try:
        return [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as exc:
        raise InvalidValue(field, name, f"malformed certificate ({exc})") from None


def pem_csr(
    data: object, name: str, field: str = "CSR", *, verify: bool = True
) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and (unless verify=False) check its self-signature, else InvalidValue."""
    blob = _pem_bytes(data, field, name)
    try:
        csr = x509.load_pem_x509_csr(blob)
    except ValueError as exc:
        raise InvalidValue(field, name, f"malformed certificate request ({exc})") from None
    if verify:
        csr_signature(csr, name, field)
    return csr


def csr_signature(csr: x509.CertificateSigningRequest, name: str, field: str = "CSR") -> None:
    """Check a CSR's self-signature: it proves the requester holds the private key."""
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # an unsupported key or algorithm surfaces here
        raise InvalidValue(field, name, f"signature cannot be checked ({exc})") from None
    if not valid:
        raise InvalidValue(field, name, "its signature does not verify (altered or corrupt)")


def pem_crl(data: object, name: str, field: str = "CRL") -> x509.CertificateRevocationList:
    """Parse a PEM CRL, else raise InvalidValue naming `name`."""
    blob = _pem_bytes(data, field, name)
    try:
        return x509.load_pem_x509_crl(blob)
    except ValueError as exc:
        raise InvalidValue(field, name, f"malformed CRL ({exc})") from None


def pem_private_key(data: object, name: str, passphrase: str | bytes | None = None):
    """Load a PEM private key (decrypting it with passphrase), else raise InvalidValue."""
    blob = _pem_bytes(data, "private key", name)
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    # PKCS#8 ("ENCRYPTED PRIVATE KEY" header) or traditional OpenSSL (a Proc-Type header).
    encrypted = b"BEGIN ENCRYPTED PRIVATE" in blob or b"Proc-Type: 4,ENCRYPTED" in blob
    if encrypted and not passphrase:
        raise InvalidValue("private key", name, "it is encrypted: give its passphrase")
    if not encrypted and passphrase:
        raise InvalidValue("private key", name, "a passphrase was given but it is not encrypted")
    try:
        return serialization.load_pem_private_key(blob, passphrase or None)
    except ValueError as exc:
        if encrypted:
            # The message must not echo the passphrase; naming the key is enough.
            raise InvalidValue(
                "passphrase for private key", name, "wrong passphrase, or the key is corrupt"
            ) from None
        raise InvalidValue("private key", name, f"malformed private key ({exc})") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidValue("private key", name, f"unsupported private key ({exc})") from None


def serial_number(value: object, field: str = "serial") -> int:
    """Parse a certificate serial: an int, decimal text, 0x-hex or colon hex (openssl's form)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            if text.lower().startswith("0x"):
                number = int(text[2:], 16)
            elif ":" in text:
                number = int(text.replace(":", ""), 16)
            elif text.isdigit():
                number = int(text)
        except ValueError:
            number = None
    # RFC 5280 4.1.2.2: positive, at most 20 octets.
    if number is None or number <= 0 or number.bit_length() > 159:
        raise InvalidValue(
            field,
            value,
            "use a positive integer of at most 20 bytes (decimal, 0x-hex or aa:bb hex)",
        )
    return number

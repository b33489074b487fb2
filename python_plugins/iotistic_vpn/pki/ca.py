"""The CA pair: a root (its key may live offline) and the issuing CA it signs."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ..errors import InvalidValue
from .keys import (
    CLOCK_SKEW,
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    PrivateKey,
    _aki_from,
    _key_usage,
    _now,
    _read_cert,
    _signing_hash,
    _ski,
    _spki,
    certificate_pem,
    fingerprint,
    generate_key,
    key_type_of,
    read_private_key,
    write_atomic,
    write_private_key,
)

ROOT_VALIDITY = dt.timedelta(days=7300)
ISSUING_VALIDITY = dt.timedelta(days=3650)

# Files of a CA directory (vpn_ca's `path`). OpenVPN's `ca` option points at CA_CHAIN.
ROOT_CERT = "root.crt"
ROOT_KEY = "root.key"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_CHAIN = "ca-chain.crt"


def create_root_ca(
    key: PrivateKey,
    common_name: str = "Iotistic VPN Root CA",
    *,
    validity: dt.timedelta = ROOT_VALIDITY,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Self-sign a root CA that may sign one level of issuing CA below it."""
    now = _now(now)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
        .add_extension(_ski(key.public_key()), critical=False)
    )
    return builder.sign(key, _signing_hash(key))


def create_issuing_ca(
    root_cert: x509.Certificate,
    root_key: PrivateKey,
    key: PrivateKey,
    common_name: str = "Iotistic VPN Issuing CA",
    *,
    validity: dt.timedelta = ISSUING_VALIDITY,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign the issuing CA (pathlen 0: it signs only end-entity certificates)."""
    now = _now(now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + validity, root_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(_aki_from(root_cert), critical=False)
    )
    return builder.sign(root_key, _signing_hash(root_key))


@dataclass(frozen=True)
class IssuingCA:
    """The issuing CA as the signer needs it: its certificate, its key and the root above it."""

    cert: x509.Certificate
    key: PrivateKey
    root: x509.Certificate

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuing then root: the order of the chain file OpenVPN's `ca` points at."""
        return [self.cert, self.root]

    @cached_property
    def key_identifier(self) -> bytes:
        """The issuing CA's subject key identifier; leaves carry it as their AKI."""
        return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    @cached_property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """AKI extension for everything this CA signs (computed once for batch issuance)."""
        return _aki_from(self.cert)

    @cached_property
    def signing_hash(self) -> hashes.HashAlgorithm | None:
        """Digest used with this CA's key."""
        return _signing_hash(self.key)


def _check_issuer(cert: x509.Certificate, issuer: x509.Certificate, name: str, field: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise InvalidValue(
            field, name, f"is not signed by {issuer.subject.rfc4514_string()}"
        ) from None


def _check_key_pair(cert: x509.Certificate, key: PrivateKey, key_name: str) -> None:
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise InvalidValue("private key", key_name, "does not match its certificate")


@dataclass(frozen=True)
class CaFiles:
    """Where the CA lives: a directory, and the root key (possibly elsewhere or offline)."""

    directory: Path
    root_key: Path

    @classmethod
    def at(cls, directory: str | os.PathLike, root_key: str | os.PathLike | None = None) -> CaFiles:
        """Lay out a CA directory; the root key defaults to <directory>/root.key."""
        directory = Path(directory)
        return cls(directory, Path(root_key) if root_key else directory / ROOT_KEY)

    @property
    def root_cert(self) -> Path:
        """The root CA certificate."""
        return self.directory / ROOT_CERT

    @property
    def cert(self) -> Path:
        """The issuing CA certificate."""
        return self.directory / CA_CERT

    @property
    def key(self) -> Path:
        """The issuing CA key (needed online to sign)."""
        return self.directory / CA_KEY

    @property
    def chain(self) -> Path:
        """Issuing + root certificates: what OpenVPN's `ca` option points at."""
        return self.directory / CA_CHAIN


def load_issuing_ca(
    directory: str | os.PathLike | CaFiles, passphrase: str | bytes | None = None
) -> IssuingCA:
    """Load the issuing CA from its directory: its key, its certificate and the root cert only."""
    files = directory if isinstance(directory, CaFiles) else CaFiles.at(directory)
    for path in (files.root_cert, files.cert, files.key):
        if not path.exists():
            raise InvalidValue(
                "CA directory", str(files.directory), f"{path.name} is missing (run vpn_ca first)"
            )
    root = _read_cert(files.root_cert, "root CA certificate")
    cert = _read_cert(files.cert, "issuing CA certificate")
    key = read_private_key(files.key, passphrase)
    _check_key_pair(cert, key, str(files.key))
    _check_issuer(cert, root, str(files.cert), "issuing CA certificate")
    return IssuingCA(cert, key, root)


@dataclass
class CaResult:
    """What ensure_ca found or made."""

    ca: IssuingCA
    files: CaFiles
    created: list[str] = field(default_factory=list)  # "root key", "root", "issuing", "chain"

    @property
    def changed(self) -> bool:
        """Whether anything was (or in check mode would be) written."""
        return bool(self.created)

    def facts(self) -> dict:
        """Non-secret facts for results and diffs."""
        return {
            "root": _cert_facts(self.ca.root),
            "issuing": _cert_facts(self.ca.cert),
            "key_type": key_type_of(self.ca.key),
        }


def _leaf_facts(cert: x509.Certificate) -> dict:
    return {
        "serial": str(cert.serial_number),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint": fingerprint(cert),
    }


def _cert_facts(cert: x509.Certificate) -> dict:
    return {"subject": cert.subject.rfc4514_string(), **_leaf_facts(cert)}


def ensure_ca(
    files: CaFiles,
    *,
    key_type: str = DEFAULT_KEY_TYPE,
    passphrase: str | bytes | None = None,
    root_passphrase: str | bytes | None = None,
    name: str = "Iotistic VPN",
    root_validity: dt.timedelta = ROOT_VALIDITY,
    issuing_validity: dt.timedelta = ISSUING_VALIDITY,
    write: bool = True,
    now: dt.datetime | None = None,
) -> CaResult:
    """Load the CA pair from files, making whatever is missing; an existing CA is kept as is."""
    if key_type not in KEY_TYPES:
        raise InvalidValue("key type", key_type, f"use one of {', '.join(KEY_TYPES)}")
    root_passphrase = passphrase if root_passphrase is None else root_passphrase
    created: list[str] = []
    root_key = None
    if files.root_cert.exists():
        root = _read_cert(files.root_cert, "root CA certificate")
    elif files.cert.exists():
        # Making a new root would orphan every certificate the issuing CA signed.
        raise InvalidValue(
            "CA directory", str(files.directory), f"{CA_CERT} exists but {ROOT_CERT} is missing"
        )
    else:
        if files.root_key.exists():
            root_key = read_private_key(files.root_key, root_passphrase)
        else:
            root_key = generate_key(key_type)
            created.append("root key")
        root = create_root_ca(root_key, f"{name} Root CA", validity=root_validity, now=now)
        created.append("root")

    if files.cert.exists() and not files.key.exists():
        # A new issuing key would replace ca.crt and orphan every certificate it signed.
        raise InvalidValue(
            "CA directory", str(files.directory),
            f"{CA_CERT} exists but its key {files.key.name} is missing (restore it)",
        )  # fmt: skip
    if files.cert.exists() and files.key.exists():
        cert = _read_cert(files.cert, "issuing CA certificate")
        key = read_private_key(files.key, passphrase)
        _check_key_pair(cert, key, str(files.key))
        _check_issuer(cert, root, str(files.cert), "issuing CA certificate")
    else:
        if root_key is None:
            if not files.root_key.exists():
                raise InvalidValue(
                    "root CA key",
                    str(files.root_key),
                    "is needed to sign a new issuing CA but is not there (bring the offline key)",
                )
            root_key = read_private_key(files.root_key, root_passphrase)
            _check_key_pair(root, root_key, str(files.root_key))
        key = (
            read_private_key(files.key, passphrase)
            if files.key.exists()
            else generate_key(key_type)
        )
        cert = create_issuing_ca(
            root, root_key, key, f"{name} Issuing CA", validity=issuing_validity, now=now
        )
        created.append("issuing")

    ca = IssuingCA(cert, key, root)
    chain_pem = certificate_pem(*ca.chain)
    if not files.chain.exists() or files.chain.read_bytes() != chain_pem:
        created.append("chain")
    if write and created:
        if "root key" in created:
            write_private_key(files.root_key, root_key, root_passphrase)
        if "root" in created:
            write_atomic(files.root_cert, certificate_pem(root))
        if "issuing" in created:
            if not files.key.exists():
                write_private_key(files.key, key, passphrase)
            write_atomic(files.cert, certificate_pem(cert))
        write_atomic(files.chain, chain_pem)
    return CaResult(ca, files, created)

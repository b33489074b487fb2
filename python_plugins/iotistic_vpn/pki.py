"""The PKI of Iotistic VPN: CA pair, device and gateway certificates, revocation.

One root CA (its key may live offline) signs one issuing CA (pathlen 0); the issuing CA signs
device certificates (clientAuth only, identity bound by the CA from the registry, never taken
from the CSR) and gateway certificates (serverAuth only), so with OpenVPN's `remote-cert-tls`
a device certificate can never pose as a gateway. Revocation is a CRL built in one pass, and
the `crl-verify DIR dir` layout whose cost per handshake does not grow with the fleet.

The `ensure_*` functions are what the Ansible modules call: they compare the files on disk with
what is wanted, return what would change, and write only when `write=True` (check mode passes
False). Every bad input raises InvalidValue naming the value, the file or the device.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import validation
from .errors import InvalidValue

__all__ = [
    "CA_CERT",
    "CA_CHAIN",
    "CA_KEY",
    "DEFAULT_KEY_TYPE",
    "KEY_TYPES",
    "REVOCATION_REASONS",
    "ROOT_CERT",
    "ROOT_KEY",
    "CaFiles",
    "CaResult",
    "CrlResult",
    "DeviceIdentity",
    "DeviceRequest",
    "DeviceResult",
    "GatewayResult",
    "IssuingCA",
    "Revocation",
    "build_crl",
    "certificate_pem",
    "check_public_key",
    "create_issuing_ca",
    "create_root_ca",
    "crl_needs_refresh",
    "crl_number",
    "crl_revocations",
    "device_identity",
    "device_uri",
    "ensure_ca",
    "ensure_crl",
    "ensure_device_certs",
    "ensure_gateway_cert",
    "fingerprint",
    "generate_key",
    "is_issued_by",
    "issue_device_cert",
    "issue_gateway_cert",
    "key_type_of",
    "load_device_csr",
    "load_issuing_ca",
    "needs_renewal",
    "private_key_pem",
    "read_private_key",
    "write_atomic",
    "write_crl_dir",
    "write_private_key",
]

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-3072", "ed25519")
DEFAULT_KEY_TYPE = "ec-p256"

ROOT_VALIDITY = dt.timedelta(days=7300)
ISSUING_VALIDITY = dt.timedelta(days=3650)
DEVICE_VALIDITY = dt.timedelta(days=730)
GATEWAY_VALIDITY = dt.timedelta(days=365)
RENEW_WITHIN = dt.timedelta(days=30)
CRL_NEXT_UPDATE = dt.timedelta(days=30)
CRL_REFRESH_BEFORE = dt.timedelta(days=10)
# Devices boot with clocks a little off; a certificate or CRL "not yet valid" by seconds would
# lock them out, so validity starts a few minutes in the past.
CLOCK_SKEW = dt.timedelta(minutes=5)
MIN_RSA_BITS = 2048

# Files of a CA directory (vpn_ca's `path`). OpenVPN's `ca` option points at CA_CHAIN.
ROOT_CERT = "root.crt"
ROOT_KEY = "root.key"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_CHAIN = "ca-chain.crt"

URN_PREFIX = "urn:iotistic:"
_URN_RE = re.compile(r"urn:iotistic:([^:]+):([^:]+)")
_DNS_NAME_RE = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}
_KEY_POLICY = "use EC P-256/P-384/P-521, Ed25519 or RSA of at least 2048 bits"

# x509.ReasonFlags names; remove_from_crl belongs to delta CRLs, which are not made here.
REVOCATION_REASONS = tuple(
    flag.name for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _now(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)


# --------------------------------------------------------------------------- keys and files


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Make a private key of one of KEY_TYPES."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise InvalidValue("key type", key_type, f"use one of {', '.join(KEY_TYPES)}")


def key_type_of(key) -> str:
    """Name a private or public key's type the way KEY_TYPES does ("ec-p256", "rsa-2048", ...)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _CURVES.get(key.curve.name, f"ec-{key.curve.name}")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(key).__name__.removesuffix("PublicKey").removesuffix("PrivateKey").lower()


def check_public_key(public_key, field: str, name: str) -> None:
    """Refuse weak or unsupported keys, naming whose key it is."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise InvalidValue(field, name, f"RSA-{public_key.key_size} is too weak: {_KEY_POLICY}")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _CURVES:
            raise InvalidValue(
                field, name, f"EC curve {public_key.curve.name} is not supported: {_KEY_POLICY}"
            )
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise InvalidValue(
            field, name, f"{key_type_of(public_key)} keys are not supported: {_KEY_POLICY}"
        )


def _signing_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None  # EdDSA hashes internally
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey, passphrase: str | bytes | None = None) -> bytes:
    """Serialise a private key as PKCS#8 PEM, encrypted when a passphrase is given."""
    if passphrase:
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        encryption = serialization.BestAvailableEncryption(secret)
    else:
        encryption = serialization.NoEncryption()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def certificate_pem(*certs: x509.Certificate) -> bytes:
    """Serialise certificates as concatenated PEM (a chain file when given several)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, 64 lower-case hex digits (the registry's format)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_atomic(
    path: str | os.PathLike, data: bytes, mode: int = 0o644, sync: bool = True
) -> None:
    """Replace path with data in one rename, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600: a key is never readable by others, even for an instant.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode != 0o600:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_private_key(
    path: str | os.PathLike, key: PrivateKey, passphrase: str | bytes | None = None
) -> None:
    """Write a private key 0600, atomically, encrypted when a passphrase is given."""
    write_atomic(path, private_key_pem(key, passphrase), mode=0o600)


def read_private_key(path: str | os.PathLike, passphrase: str | bytes | None = None) -> PrivateKey:
    """Load a private key file; a missing file, a bad key or passphrase raise InvalidValue."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidValue("private key", str(path), f"cannot be read ({exc.strerror})") from None
    return validation.pem_private_key(data, str(path), passphrase)


def _read_cert(path: Path, field: str = "certificate") -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidValue(field, str(path), f"cannot be read ({exc.strerror})") from None
    return validation.pem_certificate(data, str(path), field)


# --------------------------------------------------------------------------- the CA pair


def _ski(public_key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki_from(cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*flags: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{flag: flag in flags for flag in _KEY_USAGE_FLAGS})


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


# --------------------------------------------------------------------------- device certificates


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
    csr = validation.pem_csr(data, f"{customer}/{device}", "CSR of device", verify=False)
    if verify:
        _check_device_csr(csr, customer, device)
    return csr


def _check_device_csr(csr: x509.CertificateSigningRequest, customer: str, device: str) -> None:
    label = f"{customer}/{device}"
    validation.csr_signature(csr, label, "CSR of device")
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
        identity = DeviceIdentity(req.customer, req.device)
        status = _status(
            old,
            ca,
            public_key,
            lambda c, want=identity: _identity_or_none(c) == want,
            renew_within,
            validity,
            now,
        )
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


# --------------------------------------------------------------------------- gateway certificates


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
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a server certificate for a gateway: serverAuth only, SAN DNS names."""
    _dns_names([name], name)
    dns_names = _dns_names(dns_names, name)
    check_public_key(public_key, "public key of gateway", name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        _leaf_builder(ca, subject, public_key, validity, now)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return builder.sign(ca.key, ca.signing_hash)


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
    write: bool = True,
    now: dt.datetime | None = None,
) -> GatewayResult:
    """Give a gateway a server certificate at <dest>/<name>.crt with its key (0600) beside it."""
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
        lambda c: gateway_dns_names(c) == dns_names,
        renew_within,
        validity,
        now,
    )
    cert = old
    if status != "unchanged":
        cert = issue_gateway_cert(ca, name, dns_names, public_key, validity=validity, now=now)
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


# --------------------------------------------------------------------------- revocation


@dataclass(frozen=True)
class Revocation:
    """A revoked serial; revoked_at None means "now, unless it is already revoked"."""

    serial: int
    revoked_at: dt.datetime | None = None
    reason: str | None = None

    @classmethod
    def parse(cls, serial: object, revoked_at: object = None, reason: object = None) -> Revocation:
        """Build from user input (module options), raising InvalidValue naming the bad value."""
        number = validation.serial_number(serial)
        when = None
        if isinstance(revoked_at, dt.datetime):
            when = revoked_at
        elif revoked_at not in (None, ""):
            try:
                when = dt.datetime.fromisoformat(str(revoked_at))
            except ValueError:
                raise InvalidValue(
                    "revoked_at", revoked_at, "use an ISO 8601 time such as 2026-01-31T12:00:00Z"
                ) from None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)  # naive times are UTC, as in X.509
        if reason in ("", "unspecified"):
            reason = None  # RFC 5280 5.3.1: omit the reason rather than say "unspecified"
        if reason is not None and reason not in REVOCATION_REASONS:
            raise InvalidValue(
                "revocation reason", reason, f"use one of {', '.join(REVOCATION_REASONS)}"
            )
        return cls(number, when, reason)


def _entry_reason(entry: x509.RevokedCertificate) -> str | None:
    for ext in entry.extensions:
        if isinstance(ext.value, x509.CRLReason):
            reason = ext.value.reason.name
            return None if reason == "unspecified" else reason
    return None


def _entry(rev: Revocation, now: dt.datetime) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(rev.serial)
        .revocation_date((rev.revoked_at or now).replace(microsecond=0))
    )
    if rev.reason:
        builder = builder.add_extension(
            x509.CRLReason(x509.ReasonFlags[rev.reason]), critical=False
        )
    return builder.build()


def build_crl(
    ca: IssuingCA,
    revocations: Iterable[Revocation | x509.RevokedCertificate],
    *,
    number: int = 1,
    next_update: dt.timedelta = CRL_NEXT_UPDATE,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """Sign a CRL holding every entry, handed to the builder in one list.

    Adding entries one at a time copies the builder's list each time (quadratic: 11 s at
    100,000 entries against well under a second in one list). Entries read from an earlier
    CRL are reused as they are.
    """
    now = _now(now)
    entries = [r if isinstance(r, x509.RevokedCertificate) else _entry(r, now) for r in revocations]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.cert.subject,
        last_update=now - CLOCK_SKEW,
        next_update=now + next_update,
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
            x509.Extension(x509.AuthorityKeyIdentifier.oid, False, ca.authority_key_identifier),
        ],
        revoked_certificates=entries,
    )
    return builder.sign(ca.key, ca.signing_hash)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's number (0 when it has none)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def crl_revocations(crl: x509.CertificateRevocationList) -> list[Revocation]:
    """Every entry of a CRL as a Revocation."""
    return [Revocation(e.serial_number, e.revocation_date_utc, _entry_reason(e)) for e in crl]


def crl_needs_refresh(
    crl: x509.CertificateRevocationList,
    within: dt.timedelta = CRL_REFRESH_BEFORE,
    now: dt.datetime | None = None,
) -> bool:
    """True when the CRL's nextUpdate is within `within` from now (or passed, or absent)."""
    next_update = crl.next_update_utc
    return next_update is None or next_update - _now(now) <= within


def write_crl_dir(
    directory: str | os.PathLike, serials: Iterable[int], *, write: bool = True
) -> tuple[list[int], list[int]]:
    """Make OpenVPN's `crl-verify DIR dir` layout: one empty file per revoked DECIMAL serial.

    Returns (added, removed) serials. Only all-digit names are removed, so a stray file an
    operator left there is kept.
    """
    directory = Path(directory)
    wanted = {int(s) for s in serials}
    present = set()
    if directory.is_dir():
        present = {
            int(p.name)
            for p in os.scandir(directory)
            if p.name.isascii() and p.name.isdigit() and p.is_file()
        }
    added, removed = sorted(wanted - present), sorted(present - wanted)
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        for serial in added:
            (directory / str(serial)).touch(mode=0o644)
        for serial in removed:
            (directory / str(serial)).unlink()
    return added, removed


@dataclass
class CrlResult:
    """What ensure_crl found, changed and signed."""

    path: str
    entries: int
    number: int
    next_update: str
    added: list[int]
    removed: list[int]
    updated: list[int]
    signed: bool
    dir_added: list[int] = field(default_factory=list)
    dir_removed: list[int] = field(default_factory=list)
    before: dict | None = None

    @property
    def changed(self) -> bool:
        """Whether the CRL or the crl-verify directory was (or would be) written."""
        return self.signed or bool(self.dir_added or self.dir_removed)

    def facts(self) -> dict:
        """Non-secret facts for results and diffs."""
        return {"entries": self.entries, "number": self.number, "next_update": self.next_update}


def _read_existing_crl(path: Path) -> x509.CertificateRevocationList | None:
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidValue("CRL", str(path), f"cannot be read ({exc.strerror})") from None
    return validation.pem_crl(data, str(path))


def ensure_crl(
    ca: IssuingCA,
    path: str | os.PathLike,
    revocations: Iterable[Revocation],
    *,
    exact: bool = False,
    next_update: dt.timedelta = CRL_NEXT_UPDATE,
    refresh_before: dt.timedelta = CRL_REFRESH_BEFORE,
    crl_dir: str | os.PathLike | None = None,
    write: bool = True,
    now: dt.datetime | None = None,
) -> CrlResult:
    """Make the CRL at path hold the wanted revocations; the CRL file itself is the state.

    exact=False merges them into the entries already there; exact=True keeps only these.
    The CRL is re-signed when its entries change, when nextUpdate is within refresh_before,
    or when the current CA did not sign it.
    """
    now = _now(now)
    if refresh_before >= next_update:
        raise InvalidValue(
            "CRL refresh window", f"{refresh_before.days} days",
            f"must be shorter than nextUpdate ({next_update.days} days), or every run re-signs",
        )  # fmt: skip
    path = Path(path)
    wanted: dict[int, Revocation] = {}
    for rev in revocations:
        wanted[rev.serial] = rev
    old = _read_existing_crl(path)
    current: dict[int, x509.RevokedCertificate] = {}
    if old is not None:
        current = {entry.serial_number: entry for entry in old}
    entries: dict[int, Revocation | x509.RevokedCertificate] = {}
    added, removed, updated = [], [], []
    for serial, entry in current.items():
        if exact and serial not in wanted:
            removed.append(serial)
        elif serial in wanted and _differs(entry, wanted[serial]):
            rev = wanted[serial]
            # Only what was given explicitly changes; the rest of the entry is kept.
            entries[serial] = Revocation(
                serial,
                rev.revoked_at or entry.revocation_date_utc,
                rev.reason or _entry_reason(entry),
            )
            updated.append(serial)
        else:
            entries[serial] = entry
    for serial, rev in wanted.items():
        if serial not in current:
            entries[serial] = rev
            added.append(serial)
    stale = (
        old is None
        or crl_needs_refresh(old, refresh_before, now)
        or old.issuer != ca.cert.subject
        or not old.is_signature_valid(ca.cert.public_key())
    )
    signed = bool(added or removed or updated or stale)
    before = None
    if old is not None:
        before = {
            "entries": len(current),
            "number": crl_number(old),
            "next_update": old.next_update_utc.isoformat() if old.next_update_utc else None,
        }
    crl = old
    if signed:
        number = crl_number(old) + 1 if old is not None else 1
        crl = build_crl(ca, entries.values(), number=number, next_update=next_update, now=now)
        if write:
            write_atomic(path, crl.public_bytes(serialization.Encoding.PEM))
    dir_added: list[int] = []
    dir_removed: list[int] = []
    if crl_dir is not None:
        dir_added, dir_removed = write_crl_dir(crl_dir, entries.keys(), write=write)
    return CrlResult(
        str(path),
        len(entries),
        crl_number(crl),
        crl.next_update_utc.isoformat(),
        sorted(added),
        sorted(removed),
        sorted(updated),
        signed,
        dir_added,
        dir_removed,
        before,
    )


def _differs(entry: x509.RevokedCertificate, rev: Revocation) -> bool:
    if (
        rev.revoked_at is not None
        and rev.revoked_at.replace(microsecond=0) != entry.revocation_date_utc
    ):
        return True
    return rev.reason is not None and rev.reason != _entry_reason(entry)

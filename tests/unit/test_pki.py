"""The CA pair, device and gateway certificates: checked by openssl as an outside verifier."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotistic_vpn import conventions, pki, validation
from iotistic_vpn.errors import InvalidValue

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_csr(key, cn="requested-by-device", extensions=()) -> bytes:
    """A CSR as a device makes it; subject and extensions are the device's wishes."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    edwards = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    algorithm = None if edwards else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=check)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module", params=pki.KEY_TYPES)
def ca_dir(request, tmp_path_factory) -> Path:
    """A CA pair of each key type, made once per module."""
    path = tmp_path_factory.mktemp(f"ca-{request.param}")
    pki.ensure_ca(pki.CaFiles.at(path), key_type=request.param)
    return path


@pytest.fixture(scope="module")
def p256_ca(tmp_path_factory) -> pki.IssuingCA:
    path = tmp_path_factory.mktemp("ca-p256")
    return pki.ensure_ca(pki.CaFiles.at(path)).ca


def write_cert(tmp_path: Path, cert: x509.Certificate, name: str = "leaf.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(pem(cert))
    return path


def verify(ca_dir: Path, leaf: Path, *purpose: str) -> subprocess.CompletedProcess:
    """openssl verify with the root as the only trust anchor and the issuing CA untrusted."""
    return openssl(
        "verify", *purpose, "-CAfile", str(ca_dir / pki.ROOT_CERT),
        "-untrusted", str(ca_dir / pki.CA_CERT), str(leaf), check=False,
    )  # fmt: skip


# -- the CA pair ----------------------------------------------------------------------------


def test_ca_pair_is_root_plus_pathlen0_issuing_ca_with_private_keys_0600(ca_dir):
    ca = pki.load_issuing_ca(ca_dir)
    root_bc = ca.root.extensions.get_extension_for_class(x509.BasicConstraints)
    issuing_bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca
    assert issuing_bc.critical and issuing_bc.value.ca and issuing_bc.value.path_length == 0
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    ca.cert.verify_directly_issued_by(ca.root)
    for key in (pki.ROOT_KEY, pki.CA_KEY):
        assert stat.S_IMODE((ca_dir / key).stat().st_mode) == 0o600
    chain = pki.pem_certificates((ca_dir / pki.CA_CHAIN).read_bytes(), "chain")
    assert chain == [ca.cert, ca.root]
    result = openssl("verify", "-CAfile", str(ca_dir / pki.ROOT_CERT), str(ca_dir / pki.CA_CERT))
    assert result.stdout.strip().endswith(": OK")


def test_existing_ca_is_kept_as_it_is(ca_dir):
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    result = pki.ensure_ca(pki.CaFiles.at(ca_dir))
    assert not result.changed
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before


def test_issuing_ca_signs_with_the_root_key_offline(tmp_path):
    files = pki.CaFiles.at(tmp_path / "ca", root_key=tmp_path / "offline" / "root.key")
    made = pki.ensure_ca(files, passphrase="issuing secret", root_passphrase="root secret")
    assert made.created == ["root key", "root", "issuing", "chain"]
    assert not (tmp_path / "ca" / pki.ROOT_KEY).exists()
    (tmp_path / "offline" / "root.key").unlink()  # the root key goes back into the safe

    ca = pki.load_issuing_ca(tmp_path / "ca", "issuing secret")
    cert = pki.issue_device_cert(ca, "acme", "dev-1", pki.generate_key().public_key())
    leaf = write_cert(tmp_path, cert)
    assert verify(tmp_path / "ca", leaf).returncode == 0
    assert not pki.ensure_ca(files, passphrase="issuing secret").changed

    # A new issuing CA needs the root key: the error says where it was looked for.
    (tmp_path / "ca" / pki.CA_CERT).unlink()
    with pytest.raises(InvalidValue, match=r"root CA key '.*/offline/root.key'.*offline"):
        pki.ensure_ca(files, passphrase="issuing secret")


def test_ca_keys_are_encrypted_with_the_passphrase_openssl_can_read(tmp_path):
    pki.ensure_ca(pki.CaFiles.at(tmp_path), passphrase="s3cret")
    text = (tmp_path / pki.CA_KEY).read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    openssl("pkey", "-in", str(tmp_path / pki.CA_KEY), "-passin", "pass:s3cret", "-noout")
    with pytest.raises(InvalidValue) as err:
        pki.load_issuing_ca(tmp_path, "hunter2-guess")
    # The key file is named; the passphrase is never echoed.
    assert str(err.value) == (
        f"invalid passphrase for private key '{tmp_path / pki.CA_KEY}': "
        "wrong passphrase, or the key is corrupt"
    )
    with pytest.raises(InvalidValue, match="it is encrypted: give its passphrase"):
        pki.load_issuing_ca(tmp_path)


def test_ca_directory_missing_files_is_named(tmp_path):
    with pytest.raises(
        InvalidValue, match=rf"invalid CA directory '{tmp_path}': root.crt is missing"
    ):
        pki.load_issuing_ca(tmp_path)


# -- device certificates --------------------------------------------------------------------


@pytest.mark.parametrize("device_key_type", pki.KEY_TYPES)
def test_device_cert_binds_identity_from_the_ca_not_the_csr(ca_dir, tmp_path, device_key_type):
    ca = pki.load_issuing_ca(ca_dir)
    key = pki.generate_key(device_key_type)
    wishes = [
        x509.SubjectAlternativeName([x509.DNSName("gw-1.example.net")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.BasicConstraints(ca=True, path_length=None),
    ]
    csr = pki.load_device_csr(make_csr(key, "gw-1", wishes), "acme", "dev-1")
    cert = pki.issue_device_cert(ca, "acme", "dev-1", csr.public_key())
    leaf = write_cert(tmp_path, cert)

    assert verify(ca_dir, leaf).stdout.strip() == f"{leaf}: OK"
    assert verify(ca_dir, leaf, "-purpose", "sslclient").returncode == 0
    # A device certificate can never pose as a gateway.
    assert verify(ca_dir, leaf, "-purpose", "sslserver").returncode != 0

    assert cert.subject.rfc4514_string() == "CN=dev-1,O=acme"
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:iotistic:acme:dev-1"]
    assert san.get_values_for_type(x509.DNSName) == []
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.key_identifier
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert pki.device_identity(cert) == pki.DeviceIdentity("acme", "dev-1")
    assert str(pki.device_identity(cert)) == "acme/dev-1"


def test_gateway_cert_is_server_only_with_dns_names(ca_dir, tmp_path):
    ca = pki.load_issuing_ca(ca_dir)
    result = pki.ensure_gateway_cert(
        ca, "gw-1", tmp_path / "gw", dns_names=["gw-1", "gw-1.vpn.example.net"]
    )
    leaf = Path(result.cert_path)
    assert verify(ca_dir, leaf, "-purpose", "sslserver").returncode == 0
    assert verify(ca_dir, leaf, "-purpose", "sslclient").returncode != 0
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    )
    assert pki.gateway_dns_names(cert) == ["gw-1", "gw-1.vpn.example.net"]
    assert stat.S_IMODE(Path(result.key_path).stat().st_mode) == 0o600
    with pytest.raises(InvalidValue, match=r"has no urn:iotistic: SAN URI"):
        pki.device_identity(cert)


def test_gateway_cert_is_idempotent_and_reissued_on_new_dns_names(p256_ca, tmp_path):
    first = pki.ensure_gateway_cert(p256_ca, "gw-1", tmp_path)
    key_before = Path(first.key_path).read_bytes()
    assert first.status == "issued" and first.dns_names == ["gw-1"]
    assert pki.ensure_gateway_cert(p256_ca, "gw-1", tmp_path).status == "unchanged"
    moved = pki.ensure_gateway_cert(p256_ca, "gw-1", tmp_path, dns_names=["gw-1", "gw-1.lan"])
    assert moved.status == "issued" and moved.before["serial"] == first.serial
    assert Path(first.key_path).read_bytes() == key_before  # the key is never rewritten
    with pytest.raises(InvalidValue, match=r"invalid DNS name 'GW_1'"):
        pki.ensure_gateway_cert(p256_ca, "GW_1", tmp_path)


def test_the_tunnel_client_certificate_has_a_role_no_device_or_gateway_has(p256_ca, tmp_path):
    result = pki.ensure_gateway_cert(p256_ca, "cloud-api", tmp_path, purpose="tunnel-client")
    cert = x509.load_pem_x509_certificate(Path(result.cert_path).read_bytes())
    ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ekus) == [
        ExtendedKeyUsageOID.CLIENT_AUTH, x509.ObjectIdentifier(conventions.TUNNEL_CLIENT_EKU),
    ]  # fmt: skip
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == [conventions.TUNNEL_CLIENT_ORGANIZATION]
    # No customer id can spell that organization, so no device certificate carries it.
    with pytest.raises(InvalidValue):
        validation.customer_id(conventions.TUNNEL_CLIENT_ORGANIZATION)
    again = pki.ensure_gateway_cert(p256_ca, "cloud-api", tmp_path, purpose="tunnel-client")
    assert again.status == "unchanged"
    # The same name as a gateway is another certificate: the purpose is part of what is wanted.
    as_gateway = pki.ensure_gateway_cert(p256_ca, "cloud-api", tmp_path)
    assert as_gateway.status == "issued"
    with pytest.raises(InvalidValue, match="invalid certificate purpose 'admin'"):
        pki.ensure_gateway_cert(p256_ca, "x", tmp_path, purpose="admin")


# -- bad input names what was bad -----------------------------------------------------------


def test_malformed_pem_is_named():
    with pytest.raises(InvalidValue) as err:
        pki.pem_certificate("hello", "/etc/iotistic/ca.crt")
    assert str(err.value) == (
        "invalid certificate '/etc/iotistic/ca.crt': not PEM text (no -----BEGIN line)"
    )
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(InvalidValue, match=r"invalid certificate 'x.crt': malformed certificate"):
        pki.pem_certificate(broken, "x.crt")
    with pytest.raises(InvalidValue, match=r"invalid CSR of device 'acme/dev-9': malformed"):
        pki.load_device_csr(broken.replace("CERTIFICATE", "CERTIFICATE REQUEST"), "acme", "dev-9")


def test_csr_with_broken_signature_is_refused_naming_the_device():
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(pki.generate_key())).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01  # the last byte belongs to the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidValue) as err:
        pki.load_device_csr(tampered, "acme", "dev-7")
    assert str(err.value) == (
        "invalid CSR of device 'acme/dev-7': its signature does not verify (altered or corrupt)"
    )


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (rsa.generate_private_key(65537, 1024), "RSA-1024 is too weak"),  # noqa: S505
        (ec.generate_private_key(ec.SECP256K1()), "EC curve secp256k1 is not supported"),
        (ed448.Ed448PrivateKey.generate(), "ed448 keys are not supported"),
    ],
    ids=["rsa-1024", "secp256k1", "ed448"],
)
def test_weak_or_unsupported_keys_are_refused_naming_the_device(key, reason):
    with pytest.raises(InvalidValue, match=rf"invalid public key of device 'acme/dev-3': {reason}"):
        pki.load_device_csr(make_csr(key), "acme", "dev-3")


@pytest.mark.parametrize(
    ("customer", "device", "message"),
    [
        ("Acme", "dev-1", "invalid customer id 'Acme'"),
        ("acme", "dev_1", "invalid device id 'dev_1'"),
    ],
)
def test_bad_identities_are_refused(p256_ca, customer, device, message):
    with pytest.raises(InvalidValue, match=message):
        pki.issue_device_cert(p256_ca, customer, device, pki.generate_key().public_key())


def test_unknown_key_type_is_named():
    with pytest.raises(InvalidValue, match=r"invalid key type 'rsa-1024': use one of ec-p256"):
        pki.generate_key("rsa-1024")


# -- serials and identities (property-based) ------------------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    customer=st.from_regex(validation.CUSTOMER_ID_PATTERN, fullmatch=True),
    device=st.from_regex(validation.DEVICE_ID_PATTERN, fullmatch=True),
)
def test_any_valid_identity_round_trips_with_a_large_random_serial(p256_ca, customer, device):
    cert = pki.issue_device_cert(p256_ca, customer, device, pki.generate_key().public_key())
    assert pki.device_identity(cert) == pki.DeviceIdentity(customer, device)
    serial = cert.serial_number
    # RFC 5280: positive, at most 20 octets; CA/B forum: at least 64 random bits.
    assert 0 < serial < 2**159
    assert len(cert.public_bytes(serialization.Encoding.DER)) < 1500


def test_serials_are_unique_and_carry_at_least_64_bits(p256_ca):
    key = pki.generate_key().public_key()
    serials = [pki.issue_device_cert(p256_ca, "acme", "d", key).serial_number for _ in range(200)]
    assert len(set(serials)) == 200
    # 159 random bits: the chance that all 200 are below 2**96 is nil if 64+ bits are random.
    assert max(s.bit_length() for s in serials) > 150


@given(st.integers(min_value=1, max_value=2**159 - 1))
def test_serial_parsing_accepts_openssl_and_openvpn_forms(serial):
    hex_text = f"{serial:x}"
    padded = hex_text.rjust(len(hex_text) + len(hex_text) % 2, "0")
    colon = ":".join(padded[i : i + 2] for i in range(0, len(padded), 2))
    forms = [serial, str(serial), f"0x{hex_text}"]
    if ":" in colon:  # one byte without a colon reads as decimal, as OpenVPN writes serials
        forms.append(colon.upper())
    for form in forms:
        assert validation.serial_number(form) == serial


@pytest.mark.parametrize("value", [0, -5, 2**160, "12z", "", True, None, 1.5])
def test_bad_serials_are_named(value):
    with pytest.raises(InvalidValue, match=rf"invalid serial {value!r}"):
        validation.serial_number(value)


# -- batches, renewal, central keys ---------------------------------------------------------


def test_batch_issues_once_then_skips_and_renews_without_revoking(p256_ca, tmp_path):
    keys = {f"dev-{i}": pki.generate_key() for i in range(5)}
    requests = [pki.DeviceRequest("acme", d, make_csr(k)) for d, k in keys.items()]
    first = pki.ensure_device_certs(p256_ca, requests, tmp_path)
    assert [r.status for r in first] == ["issued"] * 5
    assert Path(first[0].cert_path) == tmp_path / "acme" / "dev-0.crt"
    assert [r.status for r in pki.ensure_device_certs(p256_ca, requests, tmp_path)] == (
        ["unchanged"] * 5
    )

    later = NOW + pki.DEVICE_VALIDITY - dt.timedelta(days=10)
    renewed = pki.ensure_device_certs(
        p256_ca, requests[:1], tmp_path, renew_within=dt.timedelta(days=30), now=later
    )[0]
    assert renewed.status == "renewed"
    assert renewed.before["serial"] == first[0].serial and renewed.serial != first[0].serial
    new = x509.load_pem_x509_certificate(Path(renewed.cert_path).read_bytes())
    assert new.public_key() == keys["dev-0"].public_key()  # same key, new certificate
    assert pki.needs_renewal(new, dt.timedelta(days=30), now=later) is False


_KEY = pki.generate_key()
_SOON = NOW + pki.DEVICE_VALIDITY - dt.timedelta(days=10)  # inside a 30-day renewal window


@pytest.mark.parametrize(
    ("current", "key", "now", "status"),
    [
        (None, _KEY, NOW, "issued"),
        (("acme", "dev-1"), _KEY, NOW, "unchanged"),
        (("acme", "dev-1"), pki.generate_key(), NOW, "issued"),  # another key: a re-key
        (("acme", "dev-2"), _KEY, NOW, "issued"),  # another device's certificate
        (("beta", "dev-1"), _KEY, NOW, "issued"),  # another customer's
        (("acme", "dev-1"), _KEY, _SOON, "renewed"),
    ],
)  # fmt: skip
def test_the_device_decision_needs_only_the_current_certificate(p256_ca, current, key, now,
                                                                status):  # fmt: skip
    cert = current and pki.issue_device_cert(p256_ca, *current, _KEY.public_key(), now=NOW)
    assert pki.device_cert_status(p256_ca, "acme", "dev-1", key.public_key(), cert,
                                  now=now) == status  # fmt: skip


def test_the_device_decision_refuses_a_window_that_renews_every_time(p256_ca):
    with pytest.raises(InvalidValue, match="renewal window '730 days': must be shorter"):
        pki.device_cert_status(p256_ca, "acme", "dev-1", _KEY.public_key(), None,
                               renew_within=pki.DEVICE_VALIDITY)  # fmt: skip


def test_batch_with_one_bad_csr_writes_nothing(p256_ca, tmp_path):
    good = pki.DeviceRequest("acme", "dev-1", make_csr(pki.generate_key()))
    weak_key = rsa.generate_private_key(65537, 1024)  # noqa: S505 (the weak key under test)
    weak = pki.DeviceRequest("acme", "dev-2", make_csr(weak_key))
    with pytest.raises(InvalidValue, match="public key of device 'acme/dev-2'"):
        pki.ensure_device_certs(p256_ca, [good, weak], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_device_id_listed_twice_is_refused(p256_ca, tmp_path):
    csr = make_csr(pki.generate_key())
    twice = [pki.DeviceRequest("acme", "dev-1", csr), pki.DeviceRequest("beta", "dev-1", csr)]
    with pytest.raises(InvalidValue, match=r"invalid device 'beta/dev-1': listed twice"):
        pki.ensure_device_certs(p256_ca, twice, tmp_path)


def test_new_key_in_csr_or_new_ca_means_a_new_certificate(p256_ca, tmp_path):
    request = pki.DeviceRequest("acme", "dev-1", make_csr(pki.generate_key()))
    first = pki.ensure_device_certs(p256_ca, [request], tmp_path)[0]
    rekeyed = pki.DeviceRequest("acme", "dev-1", make_csr(pki.generate_key()))
    assert pki.ensure_device_certs(p256_ca, [rekeyed], tmp_path)[0].status == "issued"
    other_ca = pki.ensure_ca(pki.CaFiles.at(tmp_path / "other")).ca
    assert pki.ensure_device_certs(other_ca, [rekeyed], tmp_path)[0].status == "issued"
    assert (
        first.fingerprint != pki.ensure_device_certs(other_ca, [rekeyed], tmp_path)[0].fingerprint
    )


def test_central_key_is_written_0600_once_and_reused(p256_ca, tmp_path):
    request = pki.DeviceRequest("acme", "dev-1", generate_key=True, key_type="ed25519")
    assert pki.ensure_device_certs(p256_ca, [request], tmp_path, write=False)[0].status == "issued"
    assert list(tmp_path.iterdir()) == []  # write=False (check mode) leaves no trace

    first = pki.ensure_device_certs(p256_ca, [request], tmp_path)[0]
    key_path = Path(first.key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key_bytes = key_path.read_bytes()
    later = NOW + pki.DEVICE_VALIDITY
    renewed = pki.ensure_device_certs(p256_ca, [request], tmp_path, now=later)[0]
    assert renewed.status == "renewed"
    assert key_path.read_bytes() == key_bytes
    cert = x509.load_pem_x509_certificate(Path(renewed.cert_path).read_bytes())
    assert cert.public_key() == pki.read_private_key(key_path).public_key()


def test_certificate_never_outlives_its_issuing_ca(p256_ca):
    cert = pki.issue_device_cert(
        p256_ca, "acme", "dev-1", pki.generate_key().public_key(), validity=dt.timedelta(days=99999)
    )
    assert cert.not_valid_after_utc == p256_ca.cert.not_valid_after_utc


def test_atomic_write_keeps_mode_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.pem"
    pki.write_atomic(target, b"one")
    pki.write_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["file.pem"]


def test_near_the_issuing_cas_end_certificates_are_not_resigned_every_run(p256_ca, tmp_path):
    # Within the renewal window of the CA's own end a renewal cannot end later: leave it.
    request = [pki.DeviceRequest("acme", "dev-1", make_csr(pki.generate_key()))]
    late = p256_ca.cert.not_valid_after_utc - dt.timedelta(days=5)
    first = pki.ensure_device_certs(p256_ca, request, tmp_path, now=late)
    again = pki.ensure_device_certs(p256_ca, request, tmp_path, now=late + dt.timedelta(hours=1))
    assert (first[0].status, again[0].status) == ("issued", "unchanged")
    assert again[0].serial == first[0].serial


@pytest.mark.parametrize(
    ("validity", "renew_within", "message"),
    [
        (
            dt.timedelta(days=-1),
            dt.timedelta(days=0),
            "invalid validity '-1 days': must be positive",
        ),
        (dt.timedelta(days=20), dt.timedelta(days=30), "renewal window '30 days': must be shorter"),
    ],
)
def test_validity_and_renewal_window_are_checked(
    p256_ca, tmp_path, validity, renew_within, message
):
    request = [pki.DeviceRequest("acme", "dev-1", make_csr(pki.generate_key()))]
    with pytest.raises(InvalidValue, match=message):
        pki.ensure_device_certs(
            p256_ca, request, tmp_path, validity=validity, renew_within=renew_within
        )
    assert not (tmp_path / "acme").exists()


def test_an_issuing_certificate_without_its_key_is_never_replaced(tmp_path):
    files = pki.CaFiles.at(tmp_path / "ca")
    pki.ensure_ca(files)
    before = files.cert.read_bytes()
    files.key.unlink()
    with pytest.raises(InvalidValue, match=r"ca.crt exists but its key ca.key is missing"):
        pki.ensure_ca(files)
    assert files.cert.read_bytes() == before


def _csr_with(subject: list, san: list | None = None) -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("subject", "san"),
    [
        ([], None),
        ([(NameOID.COMMON_NAME, "pump-1")], None),
        ([(NameOID.COMMON_NAME, "pump-1"), (NameOID.ORGANIZATION_NAME, "acme")],
         [x509.UniformResourceIdentifier("urn:iotistic:acme:pump-1")]),
    ],
)  # fmt: skip
def test_a_csr_asking_for_its_own_identity_or_none_passes(subject, san):
    pki.check_csr_identity(_csr_with(subject, san), "acme", "pump-1")


@pytest.mark.parametrize(
    ("subject", "san", "message"),
    [
        ([(NameOID.COMMON_NAME, "pump-2")], None, "subject 'CN=pump-2' asks for another"),
        ([(NameOID.ORGANIZATION_NAME, "globex")], None, "subject 'O=globex' asks for another"),
        ([], [x509.UniformResourceIdentifier("urn:iotistic:globex:pump-1")],
         "subjectAltName .*globex.* asks for another identity"),
        ([], [x509.DNSName("gw-1")], "subjectAltName \\['gw-1'\\] asks for another identity"),
    ],
)  # fmt: skip
def test_a_csr_asking_for_another_identity_is_refused_naming_it(subject, san, message):
    with pytest.raises(InvalidValue, match=message):
        pki.check_csr_identity(_csr_with(subject, san), "acme", "pump-1")

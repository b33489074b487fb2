"""Renewal through the tunnel: a device's gateway asks the CA, for a device connected through it,
to sign the device's new CSR (docs/enrollment.md, "Renewal through the tunnel").

The device is identified by its tunnel, not by anything it says: the gateway agent maps the
request's source address to the session it admitted and sends that session's device, customer
and certificate serial with the CSR. The API takes the request only from a gateway's renewal
client certificate (clientAuth plus conventions.RENEWAL_CLIENT_EKU, chained to the issuing CA)
and checks against the registry, in one transaction with the signing:

- the device is registered for that customer and not revoked;
- the registry shows it connected through that gateway (503 while the gateway's connect
  event has not reached the registry yet: a retry passes);
- the serial is one of the device's current certificates;
- the CSR passes enrollment's checks (signature, key strength, a subject naming only itself).

Signing and recording are provisioning.provision_devices, as for an enrollment, with the same
renewal window: a certificate already renewed and not inside the window is answered again (a
device that lost the answer gets the same one), the same key is signed again (`renewed`), another
key is a re-key (`issued`). The old certificate stays valid: migration 0010 supersedes it once
the device connected with the new one. Every outcome is an audit entry (`renew`,
`renew.refused`, the gateway as actor).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import conventions, enrollment, pki, validation
from .enrollment import EnrollmentPki, EnrollmentRefused
from .errors import InvalidValue
from .registry import Registry, RegistryConflict

__all__ = ["RenewalRefused", "RenewalRequest", "Renewed", "gateway_of", "handle", "renew"]


class RenewalRefused(EnrollmentRefused):
    """A renewal refused: the HTTP status, a short reason code and the message."""


@dataclass(frozen=True)
class RenewalRequest:
    """What the gateway sends: its session's facts (device, customer, serial) and the CSR."""

    device: str
    customer: str
    serial: str  # decimal, as OpenVPN's tls_serial_0
    csr: str


@dataclass
class Renewed:
    device: str
    customer: str
    certificate: str
    ca_chain: str
    not_after: str
    serial: str
    status: str  # renewed (same key), issued (a new key) or unchanged (renewed already)

    def answer(self) -> dict:
        keys = ("device", "customer", "certificate", "ca_chain", "not_after", "serial", "status")
        return {k: getattr(self, k) for k in keys}


def gateway_of(cert_pem: str | None, ca: pki.IssuingCA) -> str:
    """The gateway a TLS client certificate names, if it is a renewal client certificate of
    this CA; else RenewalRefused (401 without one, 403 for any other certificate)."""
    if not cert_pem:
        raise RenewalRefused(401, "gateway", "a gateway's renewal client certificate is required")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    wanted = {ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string, conventions.RENEWAL_CLIENT_EKU}
    got = {oid.dotted_string for oid in pki.certificate_purposes(cert)}
    if not wanted <= got or not _signed_by(cert, ca):
        raise RenewalRefused(
            403, "gateway", f"certificate {name!r} is not a gateway's renewal client certificate"
        )
    try:
        return validation.gateway_name(name)
    except InvalidValue as exc:
        raise RenewalRefused(403, "gateway", str(exc)) from None


def _signed_by(cert: x509.Certificate, ca: pki.IssuingCA) -> bool:
    """Issued by this CA, its signature checked (the TLS listener checked it too, against
    whatever IOTISTIC_API_TLS_CLIENT_CA holds)."""
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def handle(reg: Registry, ca: EnrollmentPki, cert_pem: str | None, req: RenewalRequest,
           source: str | None) -> Renewed:  # fmt: skip
    """One renewal from the caller's certificate to the answer; every outcome audited."""
    gateway = None
    try:
        gateway = gateway_of(cert_pem, ca.ca)
        return renew(reg, ca, gateway, req, source)
    except RenewalRefused as exc:
        device, customer = _valid_or_none(req)
        reg.record_renewal(
            "renew.refused", gateway=gateway, customer_id=customer, device_id=device,
            detail={"source": source, "status": exc.status, "reason": exc.reason,
                    "message": str(exc), "asked": _asked(req)},
        )  # fmt: skip
        raise


def renew(reg: Registry, ca: EnrollmentPki, gateway: str, req: RenewalRequest,
          source: str | None = None) -> Renewed:  # fmt: skip
    """Check and sign one renewal for a gateway already authenticated; refusals change nothing."""
    device, customer = _identity(req)
    try:
        serial = validation.serial_number(req.serial, "session serial")
    except InvalidValue as exc:
        raise RenewalRefused(422, "serial", str(exc)) from None
    csr_pem = req.csr.encode()
    try:
        csr = pki.load_device_csr(csr_pem, customer, device)
        pki.check_csr_identity(csr, customer, device)
    except InvalidValue as exc:
        raise RenewalRefused(422, "csr", str(exc)) from None
    actor = f"gateway:{gateway}"
    public_key = csr.public_key()
    with reg.transaction():
        # The customer's row lock, as an enrollment takes it: the two never race on one device.
        target = reg.enrollment_target(customer, device)
        found = target.device
        if found is None:
            raise RenewalRefused(404, "device", f"device {device!r} is not registered")
        if found.customer_id != customer:
            raise RenewalRefused(409, "device", f"device {device!r} is not {customer!r}'s")
        if found.state == "revoked":
            raise RenewalRefused(409, "device", f"device {device!r} is revoked")
        if not (found.connected and found.gateway == gateway):
            # The gateway's connect event may still be on its way (its spool flushes each
            # second): worth a retry, unlike a refusal.
            raise RenewalRefused(
                503, "not_connected",
                f"the registry does not show device {device!r} connected through {gateway!r}",
            )  # fmt: skip
        if serial not in reg.current_serials([device]).get(device, frozenset()):
            raise RenewalRefused(
                409, "serial", f"certificate {serial} is not a current certificate of {device!r}"
            )
        current = enrollment.stored_certificate(target, customer, device)
        # A new key is a re-key, which a device proven by its live session may ask for.
        status = pki.device_cert_status(
            ca.ca, customer, device, public_key, current,
            renew_within=ca.renew_within, validity=ca.validity,
        )  # fmt: skip
        try:
            cert, cert_pem = enrollment.certificate_for(
                reg, ca, customer, device, public_key, status, current, target.pem, actor=actor
            )
        except (InvalidValue, RegistryConflict) as exc:
            raise RenewalRefused(409, "certificate", str(exc)) from None
        not_after = cert.not_valid_after_utc.isoformat()
        reg.record_renewal(
            "renew", gateway=gateway, customer_id=customer, device_id=device,
            detail={"source": source, "session_serial": str(serial), "certificate": status,
                    "serial": str(cert.serial_number), "not_after": not_after},
        )  # fmt: skip
    return Renewed(
        device=device, customer=customer, certificate=cert_pem, ca_chain=ca.chain_pem.decode(),
        not_after=not_after, serial=str(cert.serial_number), status=status,
    )  # fmt: skip


def _identity(req: RenewalRequest) -> tuple[str, str]:
    try:
        return validation.device_id(req.device), validation.customer_id(req.customer)
    except InvalidValue as exc:
        raise RenewalRefused(422, "device", str(exc)) from None


def _valid_or_none(req: RenewalRequest) -> tuple[str | None, str | None]:
    try:
        return _identity(req)
    except RenewalRefused:
        return None, None


def _asked(req: RenewalRequest) -> dict:
    """What the request named, cut short (it is whatever the caller sent)."""
    return {k: str(getattr(req, k))[:80] for k in ("device", "customer", "serial")}

"""Where the PKI and the registry meet: provisioning a batch, and the CRL's full list.

Provisioning: a batch of devices registered, certified and recorded as one operation.
Registry rows with stable addresses, certificates from the devices' CSRs, and the
certificates recorded against the devices, in one registry transaction. Certificate files are
written after the registry accepted the records and before the commit: if the commit then
fails, the next run finds the files unchanged and records them (recording a known certificate
is a no-op), so a retry heals and nothing is issued twice.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import pki
from .errors import InvalidValue
from .registry import Certificate, Device, Registry

__all__ = ["Provisioned", "crl_entries", "provision_devices"]


@dataclass(frozen=True)
class Provisioned:
    """One device after provisioning: where it lives on the VPN and what it holds."""

    device: Device
    certificate: pki.DeviceResult

    def as_dict(self) -> dict:
        """Non-secret facts for results and diffs."""
        return {
            "customer": self.device.customer_id,
            "device": self.device.id,
            "vpn_address": self.device.vpn_address,
            "state": self.device.state,
            "cert_path": self.certificate.cert_path,
            "key_path": self.certificate.key_path,
            "status": self.certificate.status,
            **self.certificate.facts(),
        }


def _record(result: pki.DeviceResult) -> Certificate:
    return Certificate(
        serial=int(result.serial),
        device_id=result.device,
        fingerprint=result.fingerprint,
        not_before=dt.datetime.fromisoformat(result.not_before),
        not_after=dt.datetime.fromisoformat(result.not_after),
    )


def provision_devices(
    reg: Registry,
    ca: pki.IssuingCA,
    customer_id: str,
    requests: Sequence[pki.DeviceRequest],
    dest: str | os.PathLike,
    *,
    actor: str,
    renew_within: dt.timedelta = pki.RENEW_WITHIN,
    validity: dt.timedelta = pki.DEVICE_VALIDITY,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> tuple[list[Provisioned], bool]:
    """Provision every request for customer_id; return the devices and whether anything changed.

    With dry_run, everything is computed and validated, the transaction is rolled back and no
    file is written: the result is what a real run would do.
    """
    strangers = [r for r in requests if r.customer != customer_id]
    if strangers:
        # One customer per call keeps the customer lock (and the audit trail) simple.
        raise InvalidValue(
            "device", f"{strangers[0].customer}/{strangers[0].device}",
            f"belongs to another customer than {customer_id!r}",
        )  # fmt: skip
    with reg.transaction(dry_run=dry_run):
        changed = reg.ensure_customer(customer_id, actor=actor).changed
        provisioned = reg.provision_devices(customer_id, [r.device for r in requests], actor=actor)
        changed |= provisioned.changed
        certs = pki.ensure_device_certs(
            ca, requests, dest, renew_within=renew_within, validity=validity,
            write=False, now=now,
        )  # fmt: skip
        changed |= any(c.status != "unchanged" for c in certs)
        recorded = reg.record_certificates(customer_id, [_record(c) for c in certs], actor=actor)
        changed |= recorded.changed
        # Files last, still inside the transaction: a certificate the registry refused is
        # never written, and a failed write rolls the records back.
        if not dry_run:
            pki.write_device_certs(certs)
    devices = {d.id: d for d in provisioned.items}
    return [Provisioned(devices[c.device], c) for c in certs], changed


def crl_entries(
    given: Iterable[pki.Revocation], registry: Registry | None = None
) -> list[pki.Revocation]:
    """The CRL's entries: given ones plus every revocation the registry holds.

    For a serial in both, the registry's time and reason win: it is the record of truth.
    """
    by_serial = {r.serial: r for r in given}
    if registry is not None:
        for cert in registry.revoked_certificates():
            rev = pki.Revocation.parse(cert.serial, cert.revoked_at, cert.revocation_reason)
            by_serial[rev.serial] = rev
    return list(by_serial.values())

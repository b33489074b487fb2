"""Certificates issued to devices: recorded, superseded, revoked."""

# The f-strings below splice in only this package's column lists; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime

from psycopg.rows import class_row

from .. import validation
from ..errors import InvalidValue, NotFound
from .connection import _unique
from .models import _CERT_COLS, _DEVICE_COLS, Certificate, Change, Device, EnrollmentTarget, Result


class CertificateQueries:
    """Certificates and the serials gateways admit."""

    def record_certificates(
        self,
        customer_id: str,
        certificates: Iterable[Certificate],
        *,
        actor: str,
        pems: Mapping[int, str] | None = None,
    ) -> Result:
        """Record issued certificates of the customer's devices; a known serial is unchanged.

        pems: the PEM of some of them by serial, kept with the row (what enrollment issues).
        """
        validation.customer_id(customer_id)
        validation.actor(actor)
        certs = [_check_certificate(c) for c in certificates]
        by_serial = {c.serial: c for c in certs}
        pems = _check_pems(pems or {}, by_serial)
        with self._tx() as conn:
            device_ids = _unique(c.device_id for c in certs)
            found = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM devices WHERE customer_id = %s AND id = ANY(%s) FOR UPDATE",
                    (customer_id, device_ids),
                )
            }
            for device_id in device_ids:
                if device_id not in found:
                    raise NotFound(f"device {device_id!r} of customer {customer_id!r} not found")
            known = {
                c.serial: c
                for c in conn.cursor(row_factory=class_row(Certificate)).execute(
                    f"SELECT {_CERT_COLS} FROM certificates c WHERE c.serial = ANY(%s::numeric[])",
                    ([str(s) for s in by_serial],),
                )
            }
            for serial, old in known.items():
                new = by_serial[serial]
                if (old.device_id, old.fingerprint) != (new.device_id, new.fingerprint):
                    raise InvalidValue(
                        "certificate serial", serial, "is already recorded for another certificate"
                    )
            fresh = [c for c in by_serial.values() if c.serial not in known]
            rows: list[Certificate] = []
            if fresh:
                rows = (
                    conn.cursor(row_factory=class_row(Certificate))
                    .execute(
                        f"INSERT INTO certificates AS c"
                        f" (serial, device_id, fingerprint, not_before, not_after, pem)"
                        f" SELECT * FROM unnest(%s::numeric[], %s::text[], %s::text[],"
                        f" %s::timestamptz[], %s::timestamptz[], %s::text[])"
                        f" RETURNING {_CERT_COLS}",
                        (
                            [str(c.serial) for c in fresh],
                            [c.device_id for c in fresh],
                            [c.fingerprint for c in fresh],
                            [c.not_before for c in fresh],
                            [c.not_after for c in fresh],
                            [pems.get(c.serial) for c in fresh],
                        ),
                    )
                    .fetchall()
                )
            stored = {**known, **{c.serial: c for c in rows}}
            changes = [Change("certificate.record", f"device:{c.device_id}", None, c) for c in rows]
            self._audit_each(
                conn,
                actor,
                changes,
                [{"serial": str(c.serial), "fingerprint": c.fingerprint} for c in rows],
            )
        return Result([stored[s] for s in by_serial], changes)

    def record_certificate(
        self, customer_id: str, certificate: Certificate, *, actor: str
    ) -> Certificate:
        """Record one issued certificate."""
        return self.record_certificates(customer_id, [certificate], actor=actor).items[0]

    def enrollment_target(self, customer_id: str, device_id: str) -> EnrollmentTarget:
        """Lock the customer's row (its enrollments queue on it), then read the device of that
        id, whoever's it is, and, if it is this customer's, its current certificate and PEM."""
        validation.customer_id(customer_id)
        validation.device_id(device_id)
        with self._tx() as conn:
            # Its own statement after the lock: one joined to the lock would read the devices
            # as they were before it waited, missing the enrollment it waited for.
            self._lock_customer(conn, customer_id)
            row = conn.execute(
                f"SELECT {_DEVICE_COLS}, {_CERT_COLS}, c.pem FROM devices d"
                # Current: the newest not revoked. An expired one counts: its key renews.
                " LEFT JOIN LATERAL (SELECT * FROM certificates c WHERE c.device_id = d.id"
                " AND d.customer_id = %s AND c.revoked_at IS NULL"
                " ORDER BY c.not_before DESC, c.created_at DESC, c.serial DESC LIMIT 1) c ON true"
                " WHERE d.id = %s",
                (customer_id, device_id),
            ).fetchone()
        if row is None:
            return EnrollmentTarget(None)
        cols = len(Device.__dataclass_fields__)
        cert = None if row[cols] is None else Certificate(*row[cols:-1])
        return EnrollmentTarget(Device(*row[:cols]), cert, row[-1])

    def revoke_certificates(
        self,
        customer_id: str,
        serials: Iterable[int],
        *,
        actor: str,
        reason: str = "superseded",
    ) -> Result:
        """Revoke single certificates (the old one after a rotation); idempotent."""
        validation.customer_id(customer_id)
        validation.actor(actor)
        validation.revocation_reason(reason)
        wanted = _unique(validation.serial_number(s, "certificate serial") for s in serials)
        with self._tx() as conn:
            current = {
                c.serial: c
                for c in conn.cursor(row_factory=class_row(Certificate)).execute(
                    f"SELECT {_CERT_COLS} FROM certificates c JOIN devices d ON d.id = c.device_id"
                    f" WHERE d.customer_id = %s AND c.serial = ANY(%s::numeric[]) FOR UPDATE OF c",
                    (customer_id, [str(s) for s in wanted]),
                )
            }
            for serial in wanted:
                if serial not in current:
                    raise NotFound(f"certificate {serial} of customer {customer_id!r} not found")
            todo = [s for s in wanted if current[s].revoked_at is None]
            rows = (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"UPDATE certificates c SET revoked_at = now(), revocation_reason = %s"
                    f" WHERE c.serial = ANY(%s::numeric[]) RETURNING {_CERT_COLS}",
                    (reason, [str(s) for s in todo]),
                )
                .fetchall()
            )
            after = {**current, **{c.serial: c for c in rows}}
            changes = [
                Change("certificate.revoke", f"device:{c.device_id}", current[c.serial], c)
                for c in rows
            ]
            self._audit_each(
                conn, actor, changes, [{"serial": str(c.serial), "reason": reason} for c in rows]
            )
        return Result([after[s] for s in wanted], changes)

    def certificates(self, customer_id: str, device_id: str) -> list[Certificate]:
        """Every certificate of one device, oldest first."""
        self.get_device(customer_id, device_id)
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"SELECT {_CERT_COLS} FROM certificates c WHERE c.device_id = %s"
                    " ORDER BY c.not_before, c.serial",
                    (device_id,),
                )
                .fetchall()
            )

    def current_serials(self, device_ids: Iterable[str] | None = None) -> dict[str, frozenset[int]]:
        """Serials of each device's current certificates: in validity and not revoked."""
        ids = None if device_ids is None else [validation.device_id(d) for d in device_ids]
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT device_id, serial FROM certificates WHERE revoked_at IS NULL"
                " AND not_before <= now() AND not_after > now()"
                " AND (%(ids)s::text[] IS NULL OR device_id = ANY(%(ids)s::text[]))",
                {"ids": ids},
            ).fetchall()
        serials: dict[str, set[int]] = {}
        for device_id, serial in rows:
            serials.setdefault(device_id, set()).add(int(serial))
        return {d: frozenset(s) for d, s in serials.items()}

    def record_renewal(
        self,
        outcome: str,
        *,
        gateway: str | None,
        customer_id: str | None,
        device_id: str | None,
        detail: dict,
    ) -> None:
        """One renewal's audit entry: `renew` (done) or `renew.refused`, by the gateway that
        asked for its device (None: the caller was not a gateway)."""
        if outcome not in ("renew", "renew.refused"):
            raise InvalidValue("renewal outcome", outcome, "use renew or renew.refused")
        actor = f"gateway:{gateway}" if gateway else "anonymous"
        target = f"device:{device_id}" if device_id else "renew"
        self._audit_one(actor, outcome, target, detail, customer_id=customer_id,
                        device_id=device_id)  # fmt: skip

    def revoked_certificates(self) -> list[Certificate]:
        """Every revoked certificate, for the CRL."""
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"SELECT {_CERT_COLS} FROM certificates c WHERE c.revoked_at IS NOT NULL"
                    " ORDER BY c.revoked_at, c.serial"
                )
                .fetchall()
            )


def _check_pems(pems: Mapping[int, str], by_serial: Mapping[int, Certificate]) -> dict[int, str]:
    for serial, pem in pems.items():
        if serial not in by_serial:
            raise InvalidValue("certificate PEM", serial, "is for no certificate being recorded")
        if not isinstance(pem, str) or not pem.startswith("-----BEGIN CERTIFICATE-----"):
            raise InvalidValue("certificate PEM", serial, "not a PEM certificate")
    return dict(pems)


def _check_certificate(cert: Certificate) -> Certificate:
    validation.device_id(cert.device_id)
    if isinstance(cert.serial, bool) or not isinstance(cert.serial, int):
        raise InvalidValue("certificate serial", cert.serial, "must be an integer")
    validation.serial_number(cert.serial, "certificate serial")
    fingerprint = str(cert.fingerprint).replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        raise InvalidValue("certificate fingerprint", cert.fingerprint, "must be a SHA-256 in hex")
    for name in ("not_before", "not_after"):
        value = getattr(cert, name)
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidValue(f"certificate {name}", value, "must be a timezone-aware datetime")
    if cert.not_after <= cert.not_before:
        raise InvalidValue("certificate not_after", cert.not_after, "must be after not_before")
    return Certificate(cert.serial, cert.device_id, fingerprint, cert.not_before, cert.not_after)

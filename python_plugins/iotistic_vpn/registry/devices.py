"""Devices: provisioned with a stable address, revoked, removed, looked up."""

# The f-strings below splice in only this package's column lists; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

import psycopg
from psycopg.rows import class_row

from .. import validation
from ..addressing import (
    allocate_addresses,
)
from ..conventions import DEVICE_STATES
from ..errors import InvalidValue, NotFound
from .connection import _unique
from .models import _CERT_COLS, _DEVICE_COLS, Certificate, Change, Device, DeviceStatus, Result


class DeviceQueries:
    """Devices of a customer."""

    def provision_devices(
        self, customer_id: str, device_ids: Iterable[str], *, actor: str
    ) -> Result:
        """Register devices (any number, few round trips) with stable addresses; idempotent."""
        validation.customer_id(customer_id)
        validation.actor(actor)
        ids = _unique(validation.device_id(d) for d in device_ids)
        with self._tx() as conn:
            customer = self._lock_customer(conn, customer_id)
            existing = {d.id: d for d in self._devices(conn, "d.id = ANY(%s)", [ids])}
            for device in existing.values():
                if device.customer_id != customer_id:
                    raise InvalidValue(
                        "device id", device.id, "is already registered to another customer"
                    )
                if device.state == "revoked":
                    raise InvalidValue(
                        "device id", device.id, "is revoked; a revoked device id is never reused"
                    )
            new_ids = [i for i in ids if i not in existing]
            created: dict[str, Device] = {}
            if new_ids:
                # As integers: parsing thousands of dotted quads would cost more than the query,
                # under the customer's lock.
                used = [
                    row[0]
                    for row in conn.execute(
                        "SELECT vpn_address - '0.0.0.0'::inet FROM devices WHERE customer_id = %s",
                        (customer_id,),
                    )
                ]
                addresses = allocate_addresses(customer.block, used, len(new_ids))
                rows = (
                    conn.cursor(row_factory=class_row(Device))
                    .execute(
                        f"INSERT INTO devices AS d (id, customer_id, vpn_address)"
                        f" SELECT i, %s, a::inet FROM unnest(%s::text[], %s::text[]) AS t(i, a)"
                        f" RETURNING {_DEVICE_COLS}",
                        (customer_id, new_ids, [str(a) for a in addresses]),
                    )
                    .fetchall()
                )
                created = {d.id: d for d in rows}
                changes = [
                    Change("device.provision", f"device:{i}", None, created[i]) for i in new_ids
                ]
                self._audit_each(
                    conn, actor, changes, [{"vpn_address": created[i].vpn_address} for i in new_ids]
                )
            else:
                changes = []
        return Result([existing.get(i) or created[i] for i in ids], changes)

    def provision_device(self, customer_id: str, device_id: str, *, actor: str) -> Device:
        """Register one device (or return it as it is) with its stable address."""
        return self.provision_devices(customer_id, [device_id], actor=actor).items[0]

    def remove_devices(self, customer_id: str, device_ids: Iterable[str], *, actor: str) -> Result:
        """Delete devices whose certificates have all expired; missing ones are already absent.

        A revoked device whose certificates are still within their validity stays: its row
        keeps the revoked serials on the CRL and in every gateway's crl.d.
        """
        validation.customer_id(customer_id)
        validation.actor(actor)
        ids = _unique(validation.device_id(d) for d in device_ids)
        with self._tx() as conn:
            self._lock_customer(conn, customer_id)
            present = self._devices(
                conn, "d.customer_id = %s AND d.id = ANY(%s)", [customer_id, ids], lock=True
            )
            if not present:
                return Result([], [])
            live = conn.execute(
                "SELECT device_id, serial, revoked_at IS NOT NULL, not_after FROM certificates"
                " WHERE device_id = ANY(%s) AND not_after > now() ORDER BY device_id, serial",
                ([d.id for d in present],),
            ).fetchall()
            if live:
                device_id = live[0][0]
                mine = [row for row in live if row[0] == device_id]
                serials = ", ".join(str(row[1]) for row in mine)
                if not all(row[2] for row in mine):
                    reason = f"still holds valid certificate(s) {serials}: revoke the device first"
                else:
                    until = max(row[3] for row in mine).date().isoformat()
                    reason = (
                        f"its revoked certificate(s) {serials} have not expired: it stays on "
                        f"the revocation list until {until}, remove it after that"
                    )
                raise InvalidValue("device id", device_id, reason)
            conn.execute("DELETE FROM devices WHERE id = ANY(%s)", ([d.id for d in present],))
            changes = [Change("device.delete", f"device:{d.id}", d, None) for d in present]
            self._audit_each(
                conn, actor, changes, [{"vpn_address": d.vpn_address} for d in present]
            )
        return Result([], changes)

    def revoke_devices(
        self,
        customer_id: str,
        device_ids: Iterable[str],
        *,
        actor: str,
        reason: str = "unspecified",
    ) -> Result:
        """Mark devices revoked and revoke all their certificates; idempotent."""
        validation.customer_id(customer_id)
        validation.actor(actor)
        validation.revocation_reason(reason)
        ids = _unique(validation.device_id(d) for d in device_ids)
        with self._tx() as conn:
            devices = {
                d.id: d
                for d in self._devices(
                    conn, "d.customer_id = %s AND d.id = ANY(%s)", [customer_id, ids], lock=True
                )
            }
            for device_id in ids:
                if device_id not in devices:
                    raise NotFound(f"device {device_id!r} of customer {customer_id!r} not found")
            to_revoke = [i for i in ids if devices[i].state != "revoked"]
            after = dict(devices)
            if to_revoke:
                rows = (
                    conn.cursor(row_factory=class_row(Device))
                    .execute(
                        f"UPDATE devices d SET state = 'revoked' WHERE d.id = ANY(%s)"
                        f" RETURNING {_DEVICE_COLS}",
                        (to_revoke,),
                    )
                    .fetchall()
                )
                after.update((d.id, d) for d in rows)
            certs = (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"UPDATE certificates c SET revoked_at = now(), revocation_reason = %s"
                    f" WHERE c.device_id = ANY(%s) AND c.revoked_at IS NULL"
                    f" RETURNING {_CERT_COLS}",
                    (reason, ids),
                )
                .fetchall()
            )
            serials: dict[str, list[str]] = {}
            cert_changes = []
            for cert in certs:
                serials.setdefault(cert.device_id, []).append(str(cert.serial))
                before = replace(cert, revoked_at=None, revocation_reason=None)
                cert_changes.append(Change("certificate.revoke", f"device:{cert.device_id}",
                                           before, cert))  # fmt: skip
            changes = [
                Change("device.revoke", f"device:{i}", devices[i], after[i])
                for i in ids
                if i in to_revoke or i in serials
            ]
            self._audit_each(
                conn,
                actor,
                changes,
                [{"reason": reason, "serials": serials.get(c.after.id, [])} for c in changes],
            )
        return Result([after[i] for i in ids], changes, cert_changes)

    def revoke_device(
        self, customer_id: str, device_id: str, *, actor: str, reason: str = "unspecified"
    ) -> Device:
        """Revoke one device and its certificates."""
        return self.revoke_devices(customer_id, [device_id], actor=actor, reason=reason).items[0]

    def _devices(
        self, conn: psycopg.Connection, where: str, params: Sequence[Any], *, lock: bool = False
    ) -> list[Device]:
        query = f"SELECT {_DEVICE_COLS} FROM devices d WHERE {where} ORDER BY d.id"
        if lock:
            query += " FOR UPDATE"
        return conn.cursor(row_factory=class_row(Device)).execute(query, params).fetchall()

    def get_device(self, customer_id: str, device_id: str) -> Device:
        """One device of one customer; another customer's device is NotFound too."""
        validation.customer_id(customer_id)
        validation.device_id(device_id)
        with self._tx() as conn:
            rows = self._devices(conn, "d.customer_id = %s AND d.id = %s", [customer_id, device_id])
        if not rows:
            raise NotFound(f"device {device_id!r} of customer {customer_id!r} not found")
        return rows[0]

    def find_device(self, device_id: str) -> Device:
        """A device by its globally unique id (the gateway knows only the certificate's name)."""
        validation.device_id(device_id)
        with self._tx() as conn:
            rows = self._devices(conn, "d.id = %s", [device_id])
        if not rows:
            raise NotFound(f"device {device_id!r} not found")
        return rows[0]

    def device_by_address(self, address: str | IPv4Address) -> Device:
        """The device that owns a VPN address."""
        try:
            addr = IPv4Address(address)
        except ValueError:
            raise InvalidValue("VPN address", address, "not an IPv4 address") from None
        with self._tx() as conn:
            rows = self._devices(conn, "d.vpn_address = %s::inet", [str(addr)])
        if not rows:
            raise NotFound(f"no device holds VPN address {addr}")
        return rows[0]

    def list_devices(
        self,
        *,
        customer_id: str | None = None,
        state: str | None = None,
        gateway: str | None = None,
        connected: bool | None = None,
    ) -> list[Device]:
        """Devices matching every filter given, by id."""
        clauses, params = ["true"], []
        if customer_id is not None:
            clauses.append("d.customer_id = %s")
            params.append(validation.customer_id(customer_id))
        if state is not None:
            if state not in DEVICE_STATES:
                raise InvalidValue("device state", state, f"use one of {', '.join(DEVICE_STATES)}")
            clauses.append("d.state = %s")
            params.append(state)
        if gateway is not None:
            clauses.append("d.gateway = %s")
            params.append(gateway)
        if connected is not None:
            clauses.append("d.connected = %s")
            params.append(connected)
        with self._tx() as conn:
            return self._devices(conn, " AND ".join(clauses), params)

    def device_statuses(
        self, customer_id: str | None = None, device_ids: Iterable[str] | None = None
    ) -> list[DeviceStatus]:
        """Devices (of one customer, of some ids) with their certificate's end, by id."""
        clauses, params = ["true"], []
        if customer_id is not None:
            clauses.append("d.customer_id = %s")
            params.append(validation.customer_id(customer_id))
        if device_ids is not None:
            clauses.append("d.id = ANY(%s)")
            params.append([validation.device_id(d) for d in device_ids])
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_DEVICE_COLS}, (SELECT max(c.not_after) FROM certificates c"
                " WHERE c.device_id = d.id AND c.revoked_at IS NULL AND c.not_after > now())"
                f" FROM devices d WHERE {' AND '.join(clauses)} ORDER BY d.id",
                params,
            ).fetchall()
        return [DeviceStatus(Device(*row[:-1]), row[-1]) for row in rows]

    def set_agent_key(
        self, customer_id: str, device_id: str, agent_key: str | None, *, actor: str
    ) -> Result:
        """Set (or with None, remove) the API key of a device's agent; audited without it."""
        validation.actor(actor)
        if agent_key is not None and (
            not isinstance(agent_key, str)
            or not 16 <= len(agent_key) <= 512
            or any(ord(c) < 0x21 or ord(c) > 0x7E for c in agent_key)
        ):
            raise InvalidValue(
                "agent key", "<hidden>", "use 16-512 printable ASCII characters, no spaces"
            )
        with self._tx() as conn:
            device = self._device_for_update(conn, validation.device_id(device_id))
            if device.customer_id != validation.customer_id(customer_id):
                raise NotFound(f"device {device_id!r} of customer {customer_id!r} not found")
            row = conn.execute(
                "SELECT agent_key FROM device_agent_keys WHERE device_id = %s", (device_id,)
            ).fetchone()
            if (row[0] if row else None) == agent_key:
                return Result([device], [])
            if agent_key is None:
                conn.execute("DELETE FROM device_agent_keys WHERE device_id = %s", (device_id,))
            else:
                conn.execute(
                    "INSERT INTO device_agent_keys (device_id, agent_key) VALUES (%s, %s)"
                    " ON CONFLICT (device_id) DO UPDATE SET agent_key = EXCLUDED.agent_key,"
                    " updated_at = now()",
                    (device_id, agent_key),
                )
            action = "device.agent_key.remove" if agent_key is None else "device.agent_key.set"
            change = Change(action, f"device:{device_id}", device, device)
            self._audit(conn, actor, [change], {})
            return Result([device], [change])

    def agent_key(self, device_id: str) -> str | None:
        """The API key of a device's agent, or None (the cloud API's use only)."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT agent_key FROM device_agent_keys WHERE device_id = %s",
                (validation.device_id(device_id),),
            ).fetchone()
        return row[0] if row else None

    def _device_for_update(self, conn: psycopg.Connection, device_id: str) -> Device:
        rows = self._devices(conn, "d.id = %s", [device_id], lock=True)
        if not rows:
            raise NotFound(f"device {device_id!r} not found")
        return rows[0]

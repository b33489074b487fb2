"""What gateways read and write: the snapshot they decide connects on, and connection events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from ipaddress import IPv4Address

import psycopg

from .. import validation
from ..errors import InvalidValue, NotFound
from .connection import _db_now, _unique
from .models import ConnectionEvent, Device, Snapshot


@dataclass
class _DeviceState:
    """One device's row while a batch of events is applied to it, in order."""

    state: str
    connected: bool
    gateway: str | None
    last_seen: datetime | None
    latest_connect: datetime | None  # when the newest connect happened, by the registry's clock


class ConnectionQueries:
    """The gateway agent's side of the registry."""

    def gateway_snapshot(self) -> Snapshot:
        """Every device with its address, state and current serials (see gateway_view)."""
        return self.gateway_view()[0]

    def revoked_serials(self) -> set[int]:
        """Serials of every revoked certificate (the gateways' crl-verify directory)."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT serial::text FROM certificates WHERE revoked_at IS NOT NULL"
            ).fetchall()
        return {int(row[0]) for row in rows}

    def record_connect(
        self,
        device_id: str,
        gateway: str,
        *,
        address: str | None = None,
        at: datetime | None = None,
    ) -> Device:
        """The device connected through gateway at `at` (default now): it owns the device now.

        A connect older than the newest one already recorded for the device (a gateway replaying
        its spool after an outage, while the device has moved on) is logged and changes nothing.
        """
        event = ConnectionEvent(device_id, gateway, "connect", at, address)
        with self._tx() as conn:
            outcome = self._record_events(conn, [event])[0]
            if outcome == "not_found":
                raise NotFound(f"device {device_id!r} not found")
            if outcome == "refused":
                raise InvalidValue("device id", device_id, "is revoked: connection refused")
            return self._devices(conn, "d.id = %s", [device_id])[0]

    def record_disconnect(
        self,
        device_id: str,
        gateway: str,
        *,
        address: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Log a disconnect; it counts (and returns True) only if gateway still owns the device."""
        event = ConnectionEvent(device_id, gateway, "disconnect", at, address)
        with self._tx() as conn:
            outcome = self._record_events(conn, [event])[0]
        if outcome == "not_found":
            raise NotFound(f"device {device_id!r} not found")
        return outcome == "applied"

    def record_connection_events(self, events: Sequence[ConnectionEvent]) -> list[str]:
        """Record a gateway's connects/disconnects in order, in three statements for any number.

        Each event's outcome, in order: "applied" (it changed who owns the device or whether it
        is connected), "logged" (history only: a stale connect, a disconnect from a gateway that
        does not own the device, a reconcile's repair of a device another gateway holds),
        "refused" (a connect of a revoked device) or "not_found".
        """
        with self._tx() as conn:
            return self._record_events(conn, events)

    def _record_events(
        self, conn: psycopg.Connection, events: Sequence[ConnectionEvent]
    ) -> list[str]:
        events = [_check_event(e) for e in events]
        if not events:
            return []
        now = _db_now(conn)
        # Devices locked in id order: two gateways' batches cannot deadlock.
        rows = conn.execute(
            "SELECT d.id, d.state, d.connected, d.gateway, d.last_seen,"
            " (SELECT max(e.happened_at) FROM connection_events e WHERE e.device_id = d.id"
            "  AND e.event = 'connect')"
            " FROM devices d WHERE d.id = ANY(%s) ORDER BY d.id FOR UPDATE",
            (_unique(e.device_id for e in events),),
        ).fetchall()
        state = {row[0]: _DeviceState(*row[1:]) for row in rows}
        changed: set[str] = set()
        logged: list[tuple[ConnectionEvent, datetime, datetime, str | None]] = []
        outcomes = []
        for event in events:
            device = state.get(event.device_id)
            if device is None:
                outcomes.append("not_found")
                continue
            at = event.at or now
            # Events are ordered by when they happened by this server's clock, never by
            # comparing two gateways' clocks (migration 0005); `at` is the gateway's claim.
            happened = at if event.age is None else now - timedelta(seconds=event.age)
            if event.event == "connect" and device.state == "revoked":
                outcomes.append("refused")
                continue
            logged.append((event, at, happened, _remote_address(event.address)))
            if event.event == "connect":
                latest = device.latest_connect
                device.latest_connect = happened if latest is None else max(latest, happened)
                if event.repair:
                    # A reconcile's, timed at its session's start: stale only if the device has
                    # connected through another gateway since (it left; the session lingers).
                    stale = device.connected and device.gateway != event.gateway
                    stale = stale and latest is not None and latest > happened
                else:
                    stale = latest is not None and happened < latest
                if stale:
                    outcomes.append("logged")  # the device has connected somewhere since
                    continue
                if device.state == "provisioned":
                    device.state = "active"
                device.connected, device.gateway = True, event.gateway
            else:
                # A late disconnect from the gateway the device left must not undo its new tunnel.
                if device.gateway != event.gateway or not device.connected:
                    outcomes.append("logged")
                    continue
                device.connected = False
            seen = device.last_seen
            device.last_seen = happened if seen is None else max(seen, happened)
            changed.add(event.device_id)
            outcomes.append("applied")
        if logged:
            conn.execute(
                # Ids follow the order the rows come in: the batch's order.
                # The serial of a connect supersedes the device's older certificates (0010).
                "INSERT INTO connection_events"
                " (device_id, gateway, event, address, at, happened_at, serial)"
                " SELECT d, g, e, a, t, h, s FROM unnest(%s::text[], %s::text[], %s::text[],"
                " %s::inet[], %s::timestamptz[], %s::timestamptz[], %s::numeric[])"
                " WITH ORDINALITY AS u(d, g, e, a, t, h, s, n) ORDER BY n",
                (
                    [e.device_id for e, _, _, _ in logged],
                    [e.gateway for e, _, _, _ in logged],
                    [e.event for e, _, _, _ in logged],
                    [a for _, _, _, a in logged],
                    [at for _, at, _, _ in logged],
                    [h for _, _, h, _ in logged],
                    [None if e.serial is None else str(e.serial) for e, _, _, _ in logged],
                ),
            )
        if changed:
            ids = sorted(changed)
            # Presence columns only (a gateway may write no others): the database's
            # devices_presence trigger activates a provisioned device on its first connect.
            conn.execute(
                "UPDATE devices d SET connected = u.connected,"
                " gateway = u.gateway, last_seen = u.seen"
                " FROM unnest(%s::text[], %s::bool[], %s::text[], %s::timestamptz[])"
                " AS u(id, connected, gateway, seen) WHERE d.id = u.id",
                (
                    ids,
                    [state[i].connected for i in ids],
                    [state[i].gateway for i in ids],
                    [state[i].last_seen for i in ids],
                ),
            )
        return outcomes

    def disconnect_gateway(self, gateway: str) -> int:
        """Mark every device of a gateway disconnected (the gateway restarted); return how many."""
        validation.gateway_name(gateway)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE devices SET connected = false WHERE gateway = %s AND connected", (gateway,)
            )
            return cur.rowcount


def _check_event(event: ConnectionEvent) -> ConnectionEvent:
    validation.device_id(event.device_id)
    validation.gateway_name(event.gateway)
    if event.event not in ("connect", "disconnect"):
        raise InvalidValue("connection event", event.event, "use connect or disconnect")
    if event.at is not None and (not isinstance(event.at, datetime) or event.at.tzinfo is None):
        raise InvalidValue(f"{event.event} time", event.at, "must be a timezone-aware datetime")
    if event.age is not None and not (isinstance(event.age, int | float) and event.age >= 0):
        raise InvalidValue(f"{event.event} age", event.age, "must be seconds, 0 or more")
    _remote_address(event.address)
    if event.serial is not None:
        if event.event != "connect" or isinstance(event.serial, bool):
            raise InvalidValue(f"{event.event} serial", event.serial, "only a connect has one")
        return replace(event, serial=validation.serial_number(event.serial, "connect serial"))
    return event


def _remote_address(address: str | None) -> str | None:
    """The IPv4 address of "ip" or "ip:port", or None."""
    if address is None:
        return None
    try:
        return str(IPv4Address(address.split(":")[0]))
    except ValueError:
        raise InvalidValue("device remote address", address, "not an IPv4 address") from None

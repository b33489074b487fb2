"""The change feed (migration 0006): what changed since a cursor, and what the gateways decide on.

A cursor is the text of the pg_snapshot a reader last read with. The changes committed since are
exactly the `registry_changes` rows visible now and not visible in that snapshot, so a reader
misses none however the writers' transactions interleave, and no writer waits to publish. Each
read runs in one REPEATABLE READ transaction: the data it returns and the cursor it hands on are
the same view. Writers NOTIFY the channel `CHANNEL` on commit; readers that LISTEN there read
again at once, and also now and then without one, as a safety net.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address

import psycopg

from .models import DeviceGrant, GatewayChanges, Snapshot

__all__ = ["CHANNEL", "MAX_CHANGES", "ChangeQueries", "Changes"]

CHANNEL = "registry_changes"  # migration 0006's NOTIFY channel
# Beyond this many changes in one read, reading everything again is as cheap and simpler.
MAX_CHANGES = 10_000

_CURSOR = re.compile(r"\d{1,20}:\d{1,20}:(\d{1,20}(,\d{1,20})*)?")  # pg_snapshot's text
_GRANTS = (
    # Addresses as integers and serials as one string: at 100,000 devices, parsing dotted
    # quads and arrays in Python would cost more than the query itself.
    "SELECT d.id, d.customer_id, d.vpn_address - '0.0.0.0'::inet, d.state,"
    " string_agg(c.serial::text, ',')"
    " FROM devices d LEFT JOIN certificates c ON c.device_id = d.id"
    " AND c.revoked_at IS NULL AND c.not_before <= now() AND c.not_after > now()"
)


@dataclass(frozen=True)
class Changes:
    """The keys changed since a cursor, by kind ("device", "certificate", "token", "customer")."""

    cursor: str
    keys: dict[str, set[str]]

    def of(self, *kinds: str) -> set[str]:
        return set().union(*(self.keys.get(kind, set()) for kind in kinds))


class ChangeQueries:
    """Reads of the change feed, and the gateways' view of devices built on it."""

    @contextmanager
    def _view(self) -> Iterator[tuple[psycopg.Connection, str]]:
        """A read-only REPEATABLE READ transaction and the cursor of its snapshot."""
        with self._tx() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn, conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]

    def change_cursor(self) -> str:
        """Where a reader that has just read everything starts."""
        with self._view() as (_, cursor):
            return cursor

    def changes_since(self, cursor: str, *, limit: int = MAX_CHANGES) -> Changes | None:
        """The keys changed since cursor, or None when the reader must read everything again
        (more than limit changes, or some pruned before it read them)."""
        with self._view() as (conn, now):
            return self._changes(conn, cursor, now, limit)

    def _changes(
        self, conn: psycopg.Connection, cursor: str, now: str, limit: int
    ) -> Changes | None:
        if not _CURSOR.fullmatch(cursor):
            return None  # not a cursor this registry hands out: start again
        behind = conn.execute(
            "SELECT pg_snapshot_xmin(%s::pg_snapshot) <= pruned_through"
            " FROM registry_change_horizon",
            (cursor,),
        ).fetchone()[0]
        if behind:
            return None
        rows = conn.execute(
            "SELECT kind, key FROM registry_changes"
            " WHERE xid >= pg_snapshot_xmin(%(cur)s::pg_snapshot)"
            " AND NOT pg_visible_in_snapshot(xid, %(cur)s::pg_snapshot)"
            " ORDER BY seq LIMIT %(limit)s",
            {"cur": cursor, "limit": limit + 1},
        ).fetchall()
        if len(rows) > limit:
            return None
        keys: dict[str, set[str]] = {}
        for kind, key in rows:
            keys.setdefault(kind, set()).add(key)
        return Changes(now, keys)

    # -- the gateways' view --------------------------------------------------------------------

    def gateway_view(self) -> tuple[Snapshot, set[int]]:
        """Every device's grant and every revoked serial, with the cursor of that read."""
        with self._view() as (conn, cursor):
            devices = _grants(conn.execute(_GRANTS + " GROUP BY d.id"))
            rows = conn.execute(
                "SELECT serial::text FROM certificates WHERE revoked_at IS NOT NULL"
            )
            revoked = {int(row[0]) for row in rows}
        return Snapshot(devices, time.time(), cursor), revoked

    def gateway_changes(self, cursor: str, *, limit: int = MAX_CHANGES) -> GatewayChanges | None:
        """The grants and revoked serials of the devices changed since cursor, or None when the
        gateway must read everything again (see changes_since)."""
        with self._view() as (conn, now):
            changes = self._changes(conn, cursor, now, limit)
            if changes is None:
                return None
            changed = changes.of("device", "certificate")
            devices: dict[str, DeviceGrant | None] = dict.fromkeys(changed)
            revoked: frozenset[int] = frozenset()
            if changed:
                ids = list(changed)
                devices.update(
                    _grants(conn.execute(_GRANTS + " WHERE d.id = ANY(%s) GROUP BY d.id", (ids,)))
                )
                rows = conn.execute(
                    "SELECT serial::text FROM certificates"
                    " WHERE device_id = ANY(%s) AND revoked_at IS NOT NULL",
                    (ids,),
                )
                revoked = frozenset(int(row[0]) for row in rows)
        return GatewayChanges(now, devices, revoked, time.time())


def _grants(rows: Collection[tuple] | psycopg.Cursor) -> dict[str, DeviceGrant]:
    empty: frozenset[int] = frozenset()
    return {
        device_id: DeviceGrant(
            device_id,
            customer_id,
            IPv4Address(address),
            state,
            frozenset(map(int, serials.split(","))) if serials else empty,
        )
        for device_id, customer_id, address, state, serials in rows
    }

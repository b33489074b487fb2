"""The agent's registry snapshot kept current by the change feed (registry.changes).

A LISTEN on its own connection wakes the agent the moment a change commits; it then reads only
what changed since the cursor its snapshot holds, so one revocation costs one small query and a
few dictionary updates whatever the fleet's size. It reads everything at start, when the
registry says it fell behind, and every full_read_interval_s (certificates also stop being
current by the clock alone, which no writer publishes). Without a notification it still asks
for changes every snapshot_interval_s: a lost notification or listener delays a change, it
never loses one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import psycopg

from ..registry import GatewayChanges, Registry
from ..registry.changes import CHANNEL
from .authorize import Snapshot
from .sessions import Backoff
from .snapshot_guard import refuse_changes

__all__ = ["ChangeListener", "Full", "apply_changes", "read_registry"]

log = logging.getLogger("iotistic_vpn.gateway")


@dataclass(frozen=True)
class Full:
    """Everything read again: the snapshot and every revoked serial."""

    snapshot: Snapshot
    revoked: set[int]


def read_registry(registry: Registry, cursor: str | None) -> Full | GatewayChanges:
    """The changes since cursor, else (no cursor, or too far behind) everything."""
    if cursor is not None:
        changes = registry.gateway_changes(cursor)
        if changes is not None:
            return changes
        log.warning("fell behind the registry's change feed: reading every device again")
    return Full(*registry.gateway_view())


def apply_changes(snapshot: Snapshot, changes: GatewayChanges) -> str | None:
    """Bring snapshot forward by changes, in place (O(changes), on the event loop); or why
    not (snapshot_guard: they would leave too few devices), the cursor kept to try again."""
    refused = refuse_changes(snapshot, changes)
    if refused is not None:
        return refused
    for device, grant in changes.devices.items():
        if grant is None:
            snapshot.devices.pop(device, None)
        else:
            snapshot.devices[device] = grant
    snapshot.cursor = changes.cursor
    snapshot.taken_at = changes.taken_at
    return None


class ChangeListener:
    """LISTEN on the change feed's channel; `woken` is set for every notification, and once
    each time the link is (re)made, since what happened while it was down was not heard."""

    def __init__(self, conninfo: str, connect_timeout: int) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self.woken = asyncio.Event()
        self.listening = False

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self._conninfo, autocommit=True,
                               connect_timeout=self._connect_timeout)  # fmt: skip
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    async def run(self) -> None:
        """Keep listening until cancelled, reconnecting with backoff."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                conn = await asyncio.to_thread(self._connect)
            except psycopg.Error as exc:
                log.warning("change feed: cannot listen (%s); polling meanwhile",
                            str(exc).strip())  # fmt: skip
                await asyncio.sleep(backoff.next())
                continue
            lost = asyncio.Event()
            fd = conn.fileno()

            def readable(conn: psycopg.Connection = conn, lost: asyncio.Event = lost) -> None:
                # libpq's own calls: they read what arrived without blocking, on any psycopg.
                try:
                    conn.pgconn.consume_input()
                    while conn.pgconn.notifies() is not None:
                        self.woken.set()
                except psycopg.Error:
                    lost.set()
                if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                    lost.set()

            loop.add_reader(fd, readable)
            self.listening = True
            self.woken.set()
            backoff.reset()
            try:
                await lost.wait()
                log.warning("change feed: the listening connection was lost; reconnecting")
            finally:
                self.listening = False
                loop.remove_reader(fd)
                conn.close()

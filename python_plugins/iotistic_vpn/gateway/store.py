"""The gateway agent's local, durable state: the event spool, the last good snapshot and the
certificate facts of established sessions.

An event is on disk before the agent acts on it (iotistic_vpn.spool); the snapshot beside it
lets a restarted agent decide connects before the registry answers, and the sessions let it
judge the sessions it adopts by their certificate's serial, which OpenVPN's `status` does not
list.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import time
from dataclasses import dataclass

from ..spool import Spool, SpooledEvent
from .authorize import DeviceGrant, Snapshot
from .management import StatusClient

__all__ = ["AgentStore", "SpooledEvent", "StoredSession"]

# OpenVPN's `status` gives a client's start as the time its TLS handshake began, before the
# CONNECT the agent stamps; the handshake may take up to hand-window (60 s by default).
HANDSHAKE_SLACK_S = 120

_SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot (
    device_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    vpn_address TEXT NOT NULL,
    state TEXT NOT NULL,
    serials TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    instance TEXT NOT NULL,
    cid INTEGER NOT NULL,
    device TEXT NOT NULL,
    remote TEXT,
    connected_at REAL NOT NULL,
    env TEXT NOT NULL,
    PRIMARY KEY (instance, cid)
);
"""


@dataclass(frozen=True)
class StoredSession:
    """An established session as the agent last knew it: the certificate facts decide() reads."""

    device: str
    remote: str | None  # the device's IP address
    connected_at: float  # wall time of its CONNECT
    env: dict[str, str]  # authorize.decision_env of its CONNECT or last REAUTH

    def describes(self, client: StatusClient) -> bool:
        """Whether `status` lists this very session: a client id alone may have been reused
        by a restarted instance, even for the same device, so its address and start agree."""
        return (
            client.common_name == self.device
            and client.real_address.rpartition(":")[0] == (self.remote or "")
            and self.connected_at - HANDSHAKE_SLACK_S
            <= client.connected_since
            <= self.connected_at + 1  # status counts whole seconds
        )


class AgentStore(Spool):
    """The agent's SQLite file: the spool, plus the snapshot."""

    SCHEMA = Spool.SCHEMA + _SNAPSHOT_SCHEMA  # IF NOT EXISTS: an older agent.db gains tables

    # --- spool and sessions ------------------------------------------------------------------
    def spool_many(
        self,
        events: list[dict],
        sessions: dict[tuple[str, int], StoredSession | None] | None = None,
    ) -> int:
        """Append events and, in the same transaction (one fsync), the sessions that changed
        since the last call, by (instance, client id); None: the session is over."""
        with self._tx() as db:
            seq = self._append(db, events)
            for (instance, cid), s in (sessions or {}).items():
                if s is None:
                    db.execute("DELETE FROM sessions WHERE instance = ? AND cid = ?",
                               (instance, cid))  # fmt: skip
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                        (instance, cid, s.device, s.remote, s.connected_at, json.dumps(s.env)),
                    )
            return seq

    def stored_sessions(self) -> dict[str, dict[int, StoredSession]]:
        """The sessions last stored, by instance and client id."""
        stored: dict[str, dict[int, StoredSession]] = {}
        for instance, cid, device, remote, at, env in self._db.execute("SELECT * FROM sessions"):
            try:
                session = StoredSession(device, remote, float(at), json.loads(env))
            except (ValueError, TypeError):
                continue  # not ours to trust
            stored.setdefault(instance, {})[int(cid)] = session
        return stored

    # --- snapshot ----------------------------------------------------------------------------
    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the stored snapshot in one transaction."""
        with self._tx() as db:
            db.execute("DELETE FROM snapshot")
            db.executemany("INSERT INTO snapshot VALUES (?, ?, ?, ?, ?)",
                           map(_row, snapshot.devices.values()))  # fmt: skip
            _taken(db, snapshot.taken_at)

    def save_changes(self, devices: dict[str, DeviceGrant | None], taken_at: float) -> None:
        """Store some devices' new grants (None: gone), the rest as it was."""
        with self._tx() as db:
            db.executemany("DELETE FROM snapshot WHERE device_id = ?",
                           [(d,) for d, g in devices.items() if g is None])  # fmt: skip
            db.executemany("INSERT OR REPLACE INTO snapshot VALUES (?, ?, ?, ?, ?)",
                           [_row(g) for g in devices.values() if g is not None])  # fmt: skip
            _taken(db, taken_at)

    def load_snapshot(self) -> Snapshot:
        """The last snapshot saved, or an empty one."""
        devices = {
            row[0]: DeviceGrant(
                device_id=row[0],
                customer_id=row[1],
                vpn_address=ipaddress.IPv4Address(row[2]),
                state=row[3],
                serials=frozenset(int(s) for s in json.loads(row[4])),
            )
            for row in self._db.execute("SELECT * FROM snapshot")
        }
        taken = self._db.execute("SELECT value FROM meta WHERE key = 'taken_at'").fetchone()
        return Snapshot(devices, float(taken[0]) if taken else 0.0)


def _row(g: DeviceGrant) -> tuple[str, str, str, str, str]:
    serials = json.dumps(sorted(str(s) for s in g.serials))
    return g.device_id, g.customer_id, str(g.vpn_address), g.state, serials


def _taken(db: sqlite3.Connection, taken_at: float) -> None:
    db.execute("INSERT OR REPLACE INTO meta VALUES ('taken_at', ?)",
               (repr(taken_at or time.time()),))  # fmt: skip

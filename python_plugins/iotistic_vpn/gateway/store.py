"""The gateway agent's local, durable state: the last good registry snapshot and the event spool.

SQLite (stdlib, WAL, synchronous=FULL) gives ordered, crash-safe appends without a file format
of our own: an event is on disk before the agent acts on it, and it leaves the spool only after
the registry committed it.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .authorize import DeviceGrant, Snapshot

__all__ = ["AgentStore", "SpooledEvent"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (
    device_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    vpn_address TEXT NOT NULL,
    state TEXT NOT NULL,
    serials TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class SpooledEvent:
    seq: int
    event: dict


class AgentStore:
    """One SQLite file, 0600, owned by the agent."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- spool -------------------------------------------------------------------------------
    def spool(self, event: dict) -> int:
        """Append an event durably; return its sequence number."""
        return self.spool_many([event])

    def spool_many(self, events: list[dict]) -> int:
        """Append events durably in one transaction (one fsync); return the last sequence number."""
        with self._tx() as db:
            rows = [(json.dumps(event),) for event in events]
            db.executemany("INSERT INTO spool (body) VALUES (?)", rows)
            return int(db.execute("SELECT max(seq) FROM spool").fetchone()[0] or 0)

    def pending(self, limit: int = 1000) -> list[SpooledEvent]:
        """The oldest events not yet acknowledged, in the order they happened."""
        rows = self._db.execute(
            "SELECT seq, body FROM spool ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [SpooledEvent(seq, json.loads(body)) for seq, body in rows]

    def ack(self, up_to_seq: int) -> None:
        """Forget events the registry has committed."""
        self._db.execute("DELETE FROM spool WHERE seq <= ?", (up_to_seq,))

    def spooled(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    # --- snapshot ----------------------------------------------------------------------------
    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the stored snapshot in one transaction."""
        with self._tx() as db:
            db.execute("DELETE FROM snapshot")
            db.executemany(
                "INSERT INTO snapshot VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        g.device_id,
                        g.customer_id,
                        str(g.vpn_address),
                        g.state,
                        json.dumps(sorted(str(s) for s in g.serials)),
                    )
                    for g in snapshot.devices.values()
                ],
            )
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('taken_at', ?)",
                (repr(snapshot.taken_at or time.time()),),
            )

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

"""The gateway agent's local, durable state: the event spool and the last good snapshot.

An event is on disk before the agent acts on it (iotistic_vpn.spool); the snapshot beside it
lets a restarted agent decide connects before the registry answers.
"""

from __future__ import annotations

import ipaddress
import json
import time

from ..spool import Spool, SpooledEvent
from .authorize import DeviceGrant, Snapshot

__all__ = ["AgentStore", "SpooledEvent"]

_SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot (
    device_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    vpn_address TEXT NOT NULL,
    state TEXT NOT NULL,
    serials TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AgentStore(Spool):
    """The agent's SQLite file: the spool, plus the snapshot."""

    SCHEMA = Spool.SCHEMA + _SNAPSHOT_SCHEMA

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

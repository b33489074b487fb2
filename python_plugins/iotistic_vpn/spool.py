"""A durable, ordered local spool: what must reach the registry, kept on disk until it has.

SQLite (stdlib, WAL, synchronous=FULL) gives ordered, crash-safe appends without a file format
of our own: an entry is on disk before its writer goes on, and it leaves the spool only after
the registry committed it. The gateway agent spools connection events, the cloud API its
audit entries.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpooledEvent"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledEvent:
    seq: int
    event: dict


class Spool:
    """One SQLite file, 0600, owned by its process; subclasses add tables of their own."""

    SCHEMA = _SCHEMA

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(self.SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full, I/O error) can leave the transaction open: close it,
            # or every later BEGIN fails too.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # --- spool -------------------------------------------------------------------------------
    def spool(self, event: dict) -> int:
        """Append an event durably; return its sequence number."""
        return self.spool_many([event])

    def spool_many(self, events: list[dict]) -> int:
        """Append events durably in one transaction (one fsync); return the last sequence number."""
        with self._tx() as db:
            return self._append(db, events)

    def _append(self, db: sqlite3.Connection, events: list[dict]) -> int:
        """Append events inside the caller's transaction; return the last sequence number."""
        db.executemany("INSERT INTO spool (body) VALUES (?)", [(json.dumps(e),) for e in events])
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

"""The API's request audit: never blocks or fails a request, never loses an entry.

A request's record goes to memory at once; a writer task moves records to a durable spool
(iotistic_vpn.spool) every few milliseconds, and a flusher moves spooled records into the
registry's audit log in batches. While the registry is away the spool grows and the flusher
retries with backoff; what it holds is replayed in order once the registry is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from pathlib import Path

import anyio

from ..errors import IotisticVpnError
from ..registry import RequestRecord
from ..spool import Spool
from .registry_pool import RegistryPool

__all__ = ["AuditWriter"]

log = logging.getLogger("iotistic_vpn.api.audit")

SPOOL_WINDOW_S = 0.05
FLUSH_BATCH = 500


class AuditWriter:
    """Request records: memory, then the spool file, then the registry."""

    def __init__(self, pool: RegistryPool, spool_path: Path, retention_months: int = 13) -> None:
        self._pool = pool
        self._retention = retention_months
        self._spool = Spool(spool_path)
        self._pending: list[RequestRecord] = []
        self._wake = asyncio.Event()
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.depth = self._spool.spooled()  # records on disk, not yet in the registry
        self.flushed = 0

    def record(self, entry: RequestRecord) -> None:
        """Queue one record; returns at once."""
        self._pending.append(entry)
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._pending) + self.depth

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._writer()),
            asyncio.create_task(self._flusher()),
            asyncio.create_task(self._maintainer()),
        ]

    async def close(self) -> None:
        """Stop the tasks; what is in memory goes to disk first."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._write_pending()
        with contextlib.suppress(Exception):
            await self._flush_once()  # best effort; the spool keeps the rest for next start
        self._spool.close()

    async def _write_pending(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            bodies = [_to_json(r) for r in batch]
            await anyio.to_thread.run_sync(self._spool.spool_many, bodies)
            self.depth += len(batch)
            self._flush.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(SPOOL_WINDOW_S)  # one fsync for a burst of requests
            await self._write_pending()

    async def _flush_once(self) -> int:
        pending = await anyio.to_thread.run_sync(self._spool.pending, FLUSH_BATCH)
        if not pending:
            return 0
        records = [_from_json(p.event) for p in pending]
        await self._pool.run(lambda reg: reg.record_requests(records))
        await anyio.to_thread.run_sync(self._spool.ack, pending[-1].seq)
        self.depth = max(self.depth - len(pending), 0)
        self.flushed += len(pending)
        return len(pending)

    async def _flusher(self) -> None:
        delay = 0.2
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush.wait(), 1.0)
            self._flush.clear()
            try:
                while await self._flush_once() == FLUSH_BATCH:
                    pass
                delay = 0.2
            except IotisticVpnError as exc:
                log.warning("audit: %d record(s) wait in the spool: %s", self.depth, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                self._flush.set()

    async def _maintainer(self) -> None:
        """Partitions made for the coming months, those past retention dropped; every 6 h."""
        while True:
            try:
                made, dropped = await self._pool.run(
                    lambda reg: reg.maintain_audit(self._retention)
                )
                if made or dropped:
                    log.info("audit log: partitions made %s, dropped %s", made, dropped)
                await asyncio.sleep(6 * 3600)
            except IotisticVpnError as exc:
                log.warning("audit log maintenance postponed: %s", exc)
                await asyncio.sleep(60)


def _to_json(record: RequestRecord) -> dict:
    # Its fields are flat: a shallow copy, not dataclasses.asdict's deep one (60 us a record).
    return {**vars(record), "at": record.at.isoformat()}


def _from_json(body: dict) -> RequestRecord:
    return RequestRecord(**{**body, "at": datetime.fromisoformat(body["at"])})

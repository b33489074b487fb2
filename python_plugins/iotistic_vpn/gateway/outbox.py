"""The gateway agent's outbox: events on their way from memory to the registry.

Events (connect, disconnect) and the certificate facts of established sessions gather in
memory, reach the durable spool (gateway.store) a burst at a time within milliseconds, and a
flusher replays the spool to the registry in order, with their own times. Neither loop dies on
a fault that usually passes (a locked file, a full disk, the registry away): what waits stays
in order, /healthz says why (`error`), and a registry outage loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..errors import RegistryUnavailable
from ..registry import Registry
from .metrics import Metrics
from .replay import replay
from .sessions import Backoff
from .store import AgentStore, StoredSession

__all__ = ["Outbox", "RegistryHealth"]

log = logging.getLogger("iotistic_vpn.gateway")

FLUSH_BATCH = 500  # events per registry transaction
# Bursts of events are gathered before they cross to the store and registry threads: one
# handoff and one registry transaction per burst, not per event, is most of what keeps the
# agent's CPU per connect small (bench/bench_agent.py).
SPOOL_WINDOW_S = 0.05
# The registry is this far behind the gateway at most, plus a transaction: 1 s put it 1.1 s
# behind the devices' logs in a 1,000-device failover; 0.25 s costs some 40 us more agent CPU
# per connect in a storm (3-4 transactions a second instead of one), within bench_agent's noise.
FLUSH_WINDOW_S = 0.25

InThread = Callable[..., Awaitable[Any]]


class RegistryHealth:
    """Whether the registry answered the agent's last call, logged once per change."""

    def __init__(self, registry: Registry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self.up: bool | None = None  # unknown until the first call
        self.back = asyncio.Event()  # a call succeeded after a failure

    def ok(self) -> None:
        if self.up is not True:
            log.info("registry %s is reachable", self.registry.target)
            self.back.set()
        self.up = True
        self.metrics.registry_up.set(1)

    def down(self, exc: Exception) -> None:
        if self.up is not False:
            log.warning("%s; deciding from the snapshot and spooling events", exc)
        self.up = False
        self.metrics.registry_up.set(0)


class Outbox:
    """Events and session facts from memory to the spool (`writer`) and on to the registry
    (`flusher`); `in_store`/`in_db` run a call on the store's and the registry's threads."""

    def __init__(
        self,
        store: AgentStore,
        state_path: Path,
        health: RegistryHealth,
        metrics: Metrics,
        in_store: InThread,
        in_db: InThread,
    ) -> None:
        self.store = store
        self.state_path = state_path
        self.health = health
        self.metrics = metrics
        self._in_store = in_store
        self._in_db = in_db
        self.error: str | None = None  # why the spool cannot be written just now
        self._events: list[dict[str, Any]] = []  # on their way into the spool
        # Sessions' certificate facts, written with the events: after a restart, adopted
        # sessions are judged by their serial (None: the session is over).
        self._sessions: dict[tuple[str, int], StoredSession | None] = {}
        self._ready = asyncio.Event()  # something waits in memory
        self._spooled_depth = store.spooled()
        self._spooled_seq = 0  # last sequence number spooled by this process
        self._acked_seq = 0  # last sequence number the registry committed
        self._spooled = asyncio.Event()  # an event reached the spool

    @property
    def depth(self) -> int:
        """Events not yet committed by the registry, in memory or spooled."""
        return self._spooled_depth + len(self._events)

    @property
    def lagging(self) -> bool:
        """Whether the registry is behind what this agent has seen."""
        return bool(self._events) or self._acked_seq < self._spooled_seq

    def add(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._ready.set()

    def keep_session(self, instance: str, cid: int, session: StoredSession | None) -> None:
        self._sessions[instance, cid] = session
        self._ready.set()

    async def writer(self) -> None:
        """Move what waits in memory to the durable spool, a burst at a time.

        A failed write is retried, not fatal: the events wait in memory, in order, and
        connects go on being decided. Exiting would lose exactly those events and refuse
        every connect here for a fault that usually passes; meanwhile /healthz answers 503,
        so the load balancer sends new devices elsewhere.
        """
        backoff = Backoff(0.5, 5.0)
        while True:
            await self._ready.wait()
            await asyncio.sleep(SPOOL_WINDOW_S)
            try:
                await self.write()
            except sqlite3.Error as exc:
                self._failed("writing events to", exc)
                await asyncio.sleep(backoff.next())
            else:
                backoff.reset()

    async def write(self) -> None:
        """Spool what waits in memory now (also the agent's last act before it exits)."""
        self._ready.clear()
        events, self._events = self._events, []
        sessions, self._sessions = self._sessions, {}
        if events or sessions:
            try:
                self._spooled_seq = await self._in_store(self.store.spool_many, events, sessions)
            except sqlite3.Error:
                self._events[:0] = events  # still first in line for the next try
                self._sessions = {**sessions, **self._sessions}
                self._ready.set()
                raise
            self._ok()
            self._spooled_depth += len(events)
            self._spooled.set()

    async def flusher(self) -> None:
        """Replay the spool to the registry in order, a batch per transaction."""
        backoff = Backoff(0.5, 5.0)
        while True:
            self._spooled.clear()
            try:
                events = await self._in_store(self.store.pending, FLUSH_BATCH)
            except sqlite3.Error as exc:
                self._failed("reading", exc)
                await asyncio.sleep(backoff.next())
                continue
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spooled.wait(), timeout=5)
                await asyncio.sleep(FLUSH_WINDOW_S)
                continue
            try:
                dropped = await self._in_db(replay, self.health.registry, events)
            except RegistryUnavailable as exc:
                self.health.down(exc)
                # Retry after the backoff, or as soon as the snapshot loop finds it back.
                self.health.back.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.health.back.wait(), backoff.next())
                continue
            except Exception:
                log.exception("replaying %d spooled events failed", len(events))
                await asyncio.sleep(backoff.next())
                continue
            try:
                await self._in_store(self.store.ack, events[-1].seq)
            except sqlite3.Error as exc:
                # They stay spooled and are replayed again, which the registry's rules make
                # harmless (an event no newer than what it has changes nothing but history).
                self._failed("acknowledging events in", exc)
                await asyncio.sleep(backoff.next())
                continue
            self._ok()
            self._acked_seq = events[-1].seq
            self._spooled_depth = max(0, self._spooled_depth - len(events))
            self.metrics.events_flushed.inc(len(events) - dropped)
            self.metrics.events_dropped.inc(dropped)
            backoff.reset()
            if self.health.up is False:
                log.info("replayed %d spooled events", len(events))
            self.health.ok()
            if len(events) < FLUSH_BATCH:
                await asyncio.sleep(FLUSH_WINDOW_S)  # caught up: let the next burst gather

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        self.error = f"{what} the spool {self.state_path} failed: {exc}"
        log.error("%s; retrying, %d event(s) held in memory", self.error, len(self._events))

    def _ok(self) -> None:
        if self.error is not None:
            log.warning("the spool %s is writable again", self.state_path)
        self.error = None

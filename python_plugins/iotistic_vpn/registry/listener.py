"""LISTEN on the registry's change feed (registry.changes) from an asyncio event loop.

The connection is read with libpq's own non-blocking calls when its socket is readable, so it
costs no thread and works the same on every psycopg 3 (Debian 12's gateways have 3.1).
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from .changes import CHANNEL

__all__ = ["ChangeListener"]

log = logging.getLogger("iotistic_vpn.registry")
RETRY_S = (0.5, 5.0)  # first and longest pause between attempts to listen again


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
        delay = RETRY_S[0]
        while True:
            try:
                conn = await asyncio.to_thread(self._connect)
            except psycopg.Error as exc:
                log.warning("change feed: cannot listen (%s); polling meanwhile",
                            str(exc).strip())  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
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
            delay = RETRY_S[0]
            try:
                await lost.wait()
                log.warning("change feed: the listening connection was lost; reconnecting")
            finally:
                self.listening = False
                self.woken.set()  # so a reader sees at once that it is not heard any more
                loop.remove_reader(fd)
                conn.close()

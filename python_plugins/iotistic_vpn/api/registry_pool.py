"""The API's registry connections: a psycopg pool, opened and closed with the app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import RegistryUnavailable
from ..registry import Registry
from ..registry.listener import ChangeListener

__all__ = ["RegistryPool"]

T = TypeVar("T")
APPLICATION_NAME = "iotistic-vpn-api"  # what the registry's pg_stat_activity shows


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))  # 0 would mean no limit at all


class RegistryPool:
    """Registry calls from async code, each on a pooled connection in a worker thread."""

    def __init__(
        self, conninfo: str, size: int, *, timeout_s: float = 3.0,
        statement_timeout_s: float = 5.0, lock_timeout_s: float = 2.0,
    ) -> None:  # fmt: skip
        # Set per connection (libpq `options`), so they hold whatever the role's defaults are.
        limits = (f"-c statement_timeout={_ms(statement_timeout_s)}"
                  f" -c lock_timeout={_ms(lock_timeout_s)}")  # fmt: skip
        self._conninfo = conninfo
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True, "application_name": APPLICATION_NAME, "options": limits},
            open=False,
            timeout=timeout_s,
            # A dead server must not stall start-up: the API answers 503 until it is back.
            reconnect_timeout=0,
        )

    def listener(self) -> ChangeListener:
        """A LISTEN on the registry's change feed, on a connection of its own."""
        conninfo = make_conninfo(self._conninfo, application_name=APPLICATION_NAME)
        return ChangeListener(conninfo, connect_timeout=3)

    def open(self) -> None:
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def registry(self) -> Iterator[Registry]:
        try:
            with self._pool.connection() as conn:
                yield Registry(conn)
        except PoolTimeout as exc:
            raise RegistryUnavailable(f"registry database is unavailable: {exc}") from None
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(f"registry database is unavailable: {exc}") from None

    async def run(self, fn: Callable[[Registry], T]) -> T:
        """fn(registry) in a worker thread, so the event loop never waits on the database."""

        def call() -> T:
            with self.registry() as reg:
                return fn(reg)

        return await anyio.to_thread.run_sync(call)

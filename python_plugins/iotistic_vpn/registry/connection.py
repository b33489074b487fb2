"""A registry's PostgreSQL connection, its transactions, and database errors as the package's."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from ipaddress import IPv4Network
from typing import Any, Self
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..addressing import (
    parse_pool,
)
from ..conventions import CUSTOMER_BLOCK_PREFIX, VPN_POOL
from ..errors import InvalidValue, IotisticVpnError, RegistryUnavailable


class RegistryConflict(IotisticVpnError):
    """A write broke a registry rule enforced by the database (constraint or trigger)."""


class RegistryConnection:
    """A registry's connection; every query class below builds on it."""

    def __init__(
        self,
        conninfo: str | psycopg.Connection,
        *,
        connect_timeout: int = 10,
        pool: str | IPv4Network = VPN_POOL,
        block_prefix: int = CUSTOMER_BLOCK_PREFIX,
    ) -> None:
        self.pool = parse_pool(pool, block_prefix)
        self.block_prefix = block_prefix
        self._connect_timeout = connect_timeout
        if isinstance(conninfo, psycopg.Connection):
            self._conn: psycopg.Connection | None = conninfo
            self._conninfo = ""
            self._owned = False
            params = conninfo.info.get_parameters()
            params.pop("password", None)
        else:
            try:
                params = conninfo_to_dict(conninfo)
            except psycopg.ProgrammingError as exc:
                # The DSN may hold a password: name the problem, not the value.
                raise InvalidValue("registry DSN", "<hidden>", str(exc)) from None
            self._conn = None
            self._conninfo = conninfo
            self._owned = True
        password = str(params.pop("password", "") or "")
        self._secrets = [s for s in {password, quote(password, safe="")} if s]
        self.target = "{}@{}:{}/{}".format(
            params.get("user") or "?",
            params.get("host") or params.get("hostaddr") or "localhost",
            params.get("port") or 5432,
            params.get("dbname") or "?",
        )

    # -- connection and error handling ------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection if this registry opened it."""
        if self._owned and self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if not self._owned:
            raise RegistryUnavailable(
                f"registry database {self.target} is unavailable: the connection is closed"
            )
        self._conn = psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
        )
        return self._conn

    def _unavailable(self, exc: Exception) -> RegistryUnavailable:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        return RegistryUnavailable(f"registry database {self.target} is unavailable: {reason}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Translate psycopg errors into the package's errors."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if self._owned and self._conn is not None and self._conn.broken:
                self._conn = None  # reconnect on the next call
            raise self._unavailable(exc) from exc
        except psycopg.IntegrityError as exc:
            diag = exc.diag
            detail = f" ({diag.message_detail})" if diag.message_detail else ""
            raise RegistryConflict(f"{diag.message_primary or exc}{detail}") from exc
        except psycopg.errors.UndefinedTable as exc:
            raise RegistryUnavailable(
                f"registry database {self.target} has no registry schema"
                f" ({exc.diag.message_primary}): apply the migrations first"
                " (Registry.migrate, or vpn_registry with migrate: true)"
            ) from exc
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        with self._guard():
            conn = self._connection()
            with conn.transaction():
                yield conn

    @contextmanager
    def transaction(self, *, dry_run: bool = False) -> Iterator[Self]:
        """Group calls in one transaction; with dry_run, do the work and then roll it back."""
        with self._guard():
            conn = self._connection()
            with conn.transaction(force_rollback=dry_run):
                yield self


def conninfo(
    dsn: str | None = None,
    *,
    host: str = "localhost",
    port: int = 5432,
    user: str = "postgres",
    password: str | None = None,
    dbname: str = "iotistic_vpn",
    sslmode: str = "prefer",
    sslrootcert: str | None = None,
) -> str:
    """A libpq connection string: dsn as it is, or one built from the separate options."""
    if dsn:
        return dsn
    return make_conninfo(
        host=host,
        port=port,
        user=user,
        password=password,
        dbname=dbname,
        sslmode=sslmode,
        sslrootcert=sslrootcert,
    )


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _db_now(conn: psycopg.Connection) -> datetime:
    """The transaction's now(), so an event without a time of its own gets the server's."""
    return conn.execute("SELECT now()").fetchone()[0]

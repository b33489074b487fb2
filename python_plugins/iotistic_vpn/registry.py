"""The device registry: customers, devices, certificates and connections in PostgreSQL.

One class, Registry, owns every query. Writes run in a transaction each (a savepoint when the
caller opened an outer `transaction()`), lock what they allocate from, take an `actor` for
the audit log and return plain dataclasses. Allocation is race-free: a customer row lock
serialises device addresses of one customer, an advisory lock serialises new customer blocks,
and the schema's unique/exclusion constraints back both up. Every database failure becomes
RegistryUnavailable naming the server but never the password.
"""

# The f-strings below splice in only this module's column lists; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Network
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import class_row

from . import validation
from .addressing import (
    DEFAULT_BLOCK_PREFIX,
    DEFAULT_POOL,
    allocate_addresses,
    allocate_block,
    gateway_network,
    parse_pool,
)
from .authorize import DeviceGrant, Snapshot
from .errors import InvalidValue, IotisticVpnError, NotFound, RegistryUnavailable

__all__ = [
    "DEVICE_STATES",
    "REVOCATION_REASONS",
    "AuditEntry",
    "Certificate",
    "Change",
    "ConnectionEvent",
    "Customer",
    "Device",
    "Registry",
    "RegistryConflict",
    "Result",
    "conninfo",
]

DEVICE_STATES = ("provisioned", "active", "revoked")
# RFC 5280 reasons that end a certificate, spelled as cryptography's x509.ReasonFlags names.
REVOCATION_REASONS = (
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
    "aa_compromise",
)
# Advisory lock keys (arbitrary, fixed): schema migrations and customer block allocation.
_MIGRATION_LOCK = 0x10715_0001
_BLOCK_LOCK = 0x10715_0002
_GATEWAY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MIGRATION_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class RegistryConflict(IotisticVpnError):
    """A write broke a registry rule enforced by the database (constraint or trigger)."""


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    block: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Device:
    id: str
    customer_id: str
    state: str
    vpn_address: str
    connected: bool
    gateway: str | None
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (timestamps as ISO 8601)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Certificate:
    serial: int
    device_id: str
    fingerprint: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None

    def __post_init__(self) -> None:
        # PostgreSQL numeric arrives as Decimal; serials are integers everywhere else.
        if isinstance(self.serial, Decimal):
            object.__setattr__(self, "serial", int(self.serial))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (serial as a decimal string: it may exceed 2**63)."""
        return _jsonable({**asdict(self), "serial": str(self.serial)})


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One thing a write did; the same facts go to the audit log."""

    action: str
    target: str
    before: Customer | Device | Certificate | None
    after: Customer | Device | Certificate | None


@dataclass(frozen=True)
class Result:
    """What a write leaves in place (in request order) and what it changed to get there."""

    items: list[Any]
    changes: list[Change]
    # Certificates the write changed on the way (revoking a device revokes its certificates);
    # their audit entry is the one of the change that carried them.
    certificates: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class ConnectionEvent:
    """A device connected to or left a gateway, at a time (None: the server's now)."""

    device_id: str
    gateway: str
    event: str  # "connect" or "disconnect"
    at: datetime | None = None
    address: str | None = None  # where the device connected from, "ip" or "ip:port"


_CUSTOMER_COLS = "c.id, c.name, c.block::text AS block, c.created_at"
_DEVICE_COLS = (
    "d.id, d.customer_id, d.state, host(d.vpn_address) AS vpn_address, d.connected, "
    "d.gateway, d.last_seen, d.created_at, d.updated_at"
)
_CERT_COLS = (
    "c.serial, c.device_id, c.fingerprint, c.not_before, c.not_after, c.revoked_at, "
    "c.revocation_reason"
)


class Registry:
    """The registry of one PostgreSQL database; one instance per thread."""

    def __init__(
        self,
        conninfo: str | psycopg.Connection,
        *,
        connect_timeout: int = 10,
        pool: str | IPv4Network = DEFAULT_POOL,
        block_prefix: int = DEFAULT_BLOCK_PREFIX,
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

    def __enter__(self) -> Registry:
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
    def transaction(self, *, dry_run: bool = False) -> Iterator[Registry]:
        """Group calls in one transaction; with dry_run, do the work and then roll it back."""
        with self._guard():
            conn = self._connection()
            with conn.transaction(force_rollback=dry_run):
                yield self

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations in order, in one transaction; return the ones applied."""
        migrations = _migrations()
        with self._tx() as conn:
            # Concurrent callers queue here; the second one finds everything applied.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())
            applied = []
            for version, name, text in migrations:
                checksum = hashlib.sha256(text.encode()).hexdigest()
                if name in done:
                    if done[name] != checksum:
                        raise RegistryConflict(
                            f"migration {name} was changed after it was applied to {self.target}"
                        )
                    continue
                conn.execute(text)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (version, name, checksum),
                )
                applied.append(name)
        return applied

    def schema_version(self) -> int:
        """Highest applied migration version, 0 for an empty database."""
        with self._tx() as conn:
            exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
            if exists is None:
                return 0
            return conn.execute(
                "SELECT coalesce(max(version), 0) FROM schema_migrations"
            ).fetchone()[0]

    # -- customers ---------------------------------------------------------------------------

    def ensure_customer(
        self,
        customer_id: str,
        *,
        actor: str,
        state: str = "present",
        name: str | None = None,
        block: str | IPv4Network | None = None,
    ) -> Result:
        """Create or update a customer (present) or delete one that has no devices (absent)."""
        validation.customer_id(customer_id)
        _check_actor(actor)
        if state not in ("present", "absent"):
            raise InvalidValue("customer state", state, "use present or absent")
        wanted_block = self._check_block(block) if block is not None else None
        with self._tx() as conn:
            current = self._lock_customer(conn, customer_id, missing_ok=True)
            if state == "absent":
                return self._delete_customer(conn, current, actor)
            if current is None:
                # Block allocation is global: one allocator at a time, then re-check the id.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BLOCK_LOCK,))
                current = self._lock_customer(conn, customer_id, missing_ok=True)
            if current is None:
                return self._create_customer(conn, customer_id, name, wanted_block, actor)
            if wanted_block is not None and str(wanted_block) != current.block:
                raise InvalidValue(
                    "customer block",
                    str(wanted_block),
                    f"customer {customer_id!r} already owns {current.block}; blocks never change",
                )
            if name is None or name == current.name:
                return Result([current], [])
            after = (
                conn.cursor(row_factory=class_row(Customer))
                .execute(
                    f"UPDATE customers c SET name = %s WHERE id = %s RETURNING {_CUSTOMER_COLS}",
                    (name, customer_id),
                )
                .fetchone()
            )
            change = Change("customer.update", f"customer:{customer_id}", current, after)
            self._audit(conn, actor, [change], {"name": name})
            return Result([after], [change])

    def _check_block(self, block: str | IPv4Network) -> IPv4Network:
        net = validation.ip_network(block, "customer block")
        if not net.subnet_of(self.pool):
            raise InvalidValue("customer block", str(net), f"is outside the pool {self.pool}")
        if net.prefixlen > 29:
            raise InvalidValue("customer block", str(net), "must be a /29 or larger")
        return net

    def _create_customer(
        self,
        conn: psycopg.Connection,
        customer_id: str,
        name: str | None,
        block: IPv4Network | None,
        actor: str,
    ) -> Result:
        taken = [row[0] for row in conn.execute("SELECT block FROM customers")]
        if block is None:
            block = allocate_block(self.pool, taken, self.block_prefix)
        elif any(block.overlaps(other) for other in taken):
            raise InvalidValue("customer block", str(block), "overlaps another customer's block")
        elif block.overlaps(gateway_network(self.pool)):
            raise InvalidValue(
                "customer block",
                str(block),
                f"overlaps {gateway_network(self.pool)}, the gateways' tunnel addresses",
            )
        customer = (
            conn.cursor(row_factory=class_row(Customer))
            .execute(
                f"INSERT INTO customers AS c (id, name, block) VALUES (%s, %s, %s)"
                f" RETURNING {_CUSTOMER_COLS}",
                (customer_id, name or customer_id, block),
            )
            .fetchone()
        )
        change = Change("customer.create", f"customer:{customer_id}", None, customer)
        self._audit(conn, actor, [change], {"block": customer.block, "name": customer.name})
        return Result([customer], [change])

    def _delete_customer(
        self, conn: psycopg.Connection, current: Customer | None, actor: str
    ) -> Result:
        if current is None:
            return Result([], [])
        count = conn.execute(
            "SELECT count(*) FROM devices WHERE customer_id = %s", (current.id,)
        ).fetchone()[0]
        if count:
            raise InvalidValue(
                "customer id", current.id, f"still has {count} device(s): remove them first"
            )
        conn.execute("DELETE FROM customers WHERE id = %s", (current.id,))
        change = Change("customer.delete", f"customer:{current.id}", current, None)
        self._audit(conn, actor, [change], {"block": current.block})
        return Result([], [change])

    def _lock_customer(
        self, conn: psycopg.Connection, customer_id: str, *, missing_ok: bool = False
    ) -> Customer | None:
        row = (
            conn.cursor(row_factory=class_row(Customer))
            .execute(
                f"SELECT {_CUSTOMER_COLS} FROM customers c WHERE c.id = %s FOR UPDATE",
                (customer_id,),
            )
            .fetchone()
        )
        if row is None and not missing_ok:
            raise NotFound(f"customer {customer_id!r} not found")
        return row

    def get_customer(self, customer_id: str) -> Customer:
        """One customer, or NotFound."""
        validation.customer_id(customer_id)
        with self._tx() as conn:
            row = (
                conn.cursor(row_factory=class_row(Customer))
                .execute(
                    f"SELECT {_CUSTOMER_COLS} FROM customers c WHERE c.id = %s", (customer_id,)
                )
                .fetchone()
            )
        if row is None:
            raise NotFound(f"customer {customer_id!r} not found")
        return row

    def list_customers(self) -> list[Customer]:
        """Every customer, by id."""
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(Customer))
                .execute(f"SELECT {_CUSTOMER_COLS} FROM customers c ORDER BY c.id")
                .fetchall()
            )

    # -- devices -----------------------------------------------------------------------------

    def provision_devices(
        self, customer_id: str, device_ids: Iterable[str], *, actor: str
    ) -> Result:
        """Register devices (any number, few round trips) with stable addresses; idempotent."""
        validation.customer_id(customer_id)
        _check_actor(actor)
        ids = _unique(validation.device_id(d) for d in device_ids)
        with self._tx() as conn:
            customer = self._lock_customer(conn, customer_id)
            existing = {d.id: d for d in self._devices(conn, "d.id = ANY(%s)", [ids])}
            for device in existing.values():
                if device.customer_id != customer_id:
                    raise InvalidValue(
                        "device id", device.id, "is already registered to another customer"
                    )
                if device.state == "revoked":
                    raise InvalidValue(
                        "device id", device.id, "is revoked; a revoked device id is never reused"
                    )
            new_ids = [i for i in ids if i not in existing]
            created: dict[str, Device] = {}
            if new_ids:
                used = [
                    row[0]
                    for row in conn.execute(
                        "SELECT vpn_address FROM devices WHERE customer_id = %s", (customer_id,)
                    )
                ]
                addresses = allocate_addresses(customer.block, used, len(new_ids))
                rows = (
                    conn.cursor(row_factory=class_row(Device))
                    .execute(
                        f"INSERT INTO devices AS d (id, customer_id, vpn_address)"
                        f" SELECT i, %s, a::inet FROM unnest(%s::text[], %s::text[]) AS t(i, a)"
                        f" RETURNING {_DEVICE_COLS}",
                        (customer_id, new_ids, [str(a) for a in addresses]),
                    )
                    .fetchall()
                )
                created = {d.id: d for d in rows}
                changes = [
                    Change("device.provision", f"device:{i}", None, created[i]) for i in new_ids
                ]
                self._audit_each(
                    conn, actor, changes, [{"vpn_address": created[i].vpn_address} for i in new_ids]
                )
            else:
                changes = []
        return Result([existing.get(i) or created[i] for i in ids], changes)

    def provision_device(self, customer_id: str, device_id: str, *, actor: str) -> Device:
        """Register one device (or return it as it is) with its stable address."""
        return self.provision_devices(customer_id, [device_id], actor=actor).items[0]

    def remove_devices(self, customer_id: str, device_ids: Iterable[str], *, actor: str) -> Result:
        """Delete devices whose certificates have all expired; missing ones are already absent.

        A revoked device whose certificates are still within their validity stays: its row
        keeps the revoked serials on the CRL and in every gateway's crl.d.
        """
        validation.customer_id(customer_id)
        _check_actor(actor)
        ids = _unique(validation.device_id(d) for d in device_ids)
        with self._tx() as conn:
            self._lock_customer(conn, customer_id)
            present = self._devices(
                conn, "d.customer_id = %s AND d.id = ANY(%s)", [customer_id, ids], lock=True
            )
            if not present:
                return Result([], [])
            live = conn.execute(
                "SELECT device_id, serial, revoked_at IS NOT NULL, not_after FROM certificates"
                " WHERE device_id = ANY(%s) AND not_after > now() ORDER BY device_id, serial",
                ([d.id for d in present],),
            ).fetchall()
            if live:
                device_id = live[0][0]
                mine = [row for row in live if row[0] == device_id]
                serials = ", ".join(str(row[1]) for row in mine)
                if not all(row[2] for row in mine):
                    reason = f"still holds valid certificate(s) {serials}: revoke the device first"
                else:
                    until = max(row[3] for row in mine).date().isoformat()
                    reason = (
                        f"its revoked certificate(s) {serials} have not expired: it stays on "
                        f"the revocation list until {until}, remove it after that"
                    )
                raise InvalidValue("device id", device_id, reason)
            conn.execute("DELETE FROM devices WHERE id = ANY(%s)", ([d.id for d in present],))
            changes = [Change("device.delete", f"device:{d.id}", d, None) for d in present]
            self._audit_each(
                conn, actor, changes, [{"vpn_address": d.vpn_address} for d in present]
            )
        return Result([], changes)

    def revoke_devices(
        self,
        customer_id: str,
        device_ids: Iterable[str],
        *,
        actor: str,
        reason: str = "unspecified",
    ) -> Result:
        """Mark devices revoked and revoke all their certificates; idempotent."""
        validation.customer_id(customer_id)
        _check_actor(actor)
        _check_reason(reason)
        ids = _unique(validation.device_id(d) for d in device_ids)
        with self._tx() as conn:
            devices = {
                d.id: d
                for d in self._devices(
                    conn, "d.customer_id = %s AND d.id = ANY(%s)", [customer_id, ids], lock=True
                )
            }
            for device_id in ids:
                if device_id not in devices:
                    raise NotFound(f"device {device_id!r} of customer {customer_id!r} not found")
            to_revoke = [i for i in ids if devices[i].state != "revoked"]
            after = dict(devices)
            if to_revoke:
                rows = (
                    conn.cursor(row_factory=class_row(Device))
                    .execute(
                        f"UPDATE devices d SET state = 'revoked' WHERE d.id = ANY(%s)"
                        f" RETURNING {_DEVICE_COLS}",
                        (to_revoke,),
                    )
                    .fetchall()
                )
                after.update((d.id, d) for d in rows)
            certs = (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"UPDATE certificates c SET revoked_at = now(), revocation_reason = %s"
                    f" WHERE c.device_id = ANY(%s) AND c.revoked_at IS NULL"
                    f" RETURNING {_CERT_COLS}",
                    (reason, ids),
                )
                .fetchall()
            )
            serials: dict[str, list[str]] = {}
            cert_changes = []
            for cert in certs:
                serials.setdefault(cert.device_id, []).append(str(cert.serial))
                before = replace(cert, revoked_at=None, revocation_reason=None)
                cert_changes.append(Change("certificate.revoke", f"device:{cert.device_id}",
                                           before, cert))  # fmt: skip
            changes = [
                Change("device.revoke", f"device:{i}", devices[i], after[i])
                for i in ids
                if i in to_revoke or i in serials
            ]
            self._audit_each(
                conn,
                actor,
                changes,
                [{"reason": reason, "serials": serials.get(c.after.id, [])} for c in changes],
            )
        return Result([after[i] for i in ids], changes, cert_changes)

    def revoke_device(
        self, customer_id: str, device_id: str, *, actor: str, reason: str = "unspecified"
    ) -> Device:
        """Revoke one device and its certificates."""
        return self.revoke_devices(customer_id, [device_id], actor=actor, reason=reason).items[0]

    def _devices(
        self, conn: psycopg.Connection, where: str, params: Sequence[Any], *, lock: bool = False
    ) -> list[Device]:
        query = f"SELECT {_DEVICE_COLS} FROM devices d WHERE {where} ORDER BY d.id"
        if lock:
            query += " FOR UPDATE"
        return conn.cursor(row_factory=class_row(Device)).execute(query, params).fetchall()

    def get_device(self, customer_id: str, device_id: str) -> Device:
        """One device of one customer; another customer's device is NotFound too."""
        validation.customer_id(customer_id)
        validation.device_id(device_id)
        with self._tx() as conn:
            rows = self._devices(conn, "d.customer_id = %s AND d.id = %s", [customer_id, device_id])
        if not rows:
            raise NotFound(f"device {device_id!r} of customer {customer_id!r} not found")
        return rows[0]

    def find_device(self, device_id: str) -> Device:
        """A device by its globally unique id (the gateway knows only the certificate's name)."""
        validation.device_id(device_id)
        with self._tx() as conn:
            rows = self._devices(conn, "d.id = %s", [device_id])
        if not rows:
            raise NotFound(f"device {device_id!r} not found")
        return rows[0]

    def device_by_address(self, address: str | IPv4Address) -> Device:
        """The device that owns a VPN address."""
        try:
            addr = IPv4Address(address)
        except ValueError:
            raise InvalidValue("VPN address", address, "not an IPv4 address") from None
        with self._tx() as conn:
            rows = self._devices(conn, "d.vpn_address = %s::inet", [str(addr)])
        if not rows:
            raise NotFound(f"no device holds VPN address {addr}")
        return rows[0]

    def list_devices(
        self,
        *,
        customer_id: str | None = None,
        state: str | None = None,
        gateway: str | None = None,
        connected: bool | None = None,
    ) -> list[Device]:
        """Devices matching every filter given, by id."""
        clauses, params = ["true"], []
        if customer_id is not None:
            clauses.append("d.customer_id = %s")
            params.append(validation.customer_id(customer_id))
        if state is not None:
            if state not in DEVICE_STATES:
                raise InvalidValue("device state", state, f"use one of {', '.join(DEVICE_STATES)}")
            clauses.append("d.state = %s")
            params.append(state)
        if gateway is not None:
            clauses.append("d.gateway = %s")
            params.append(gateway)
        if connected is not None:
            clauses.append("d.connected = %s")
            params.append(connected)
        with self._tx() as conn:
            return self._devices(conn, " AND ".join(clauses), params)

    # -- certificates ------------------------------------------------------------------------

    def record_certificates(
        self, customer_id: str, certificates: Iterable[Certificate], *, actor: str
    ) -> Result:
        """Record issued certificates of the customer's devices; a known serial is unchanged."""
        validation.customer_id(customer_id)
        _check_actor(actor)
        certs = [_check_certificate(c) for c in certificates]
        by_serial = {c.serial: c for c in certs}
        with self._tx() as conn:
            device_ids = _unique(c.device_id for c in certs)
            found = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM devices WHERE customer_id = %s AND id = ANY(%s) FOR UPDATE",
                    (customer_id, device_ids),
                )
            }
            for device_id in device_ids:
                if device_id not in found:
                    raise NotFound(f"device {device_id!r} of customer {customer_id!r} not found")
            known = {
                c.serial: c
                for c in conn.cursor(row_factory=class_row(Certificate)).execute(
                    f"SELECT {_CERT_COLS} FROM certificates c WHERE c.serial = ANY(%s::numeric[])",
                    ([str(s) for s in by_serial],),
                )
            }
            for serial, old in known.items():
                new = by_serial[serial]
                if (old.device_id, old.fingerprint) != (new.device_id, new.fingerprint):
                    raise InvalidValue(
                        "certificate serial", serial, "is already recorded for another certificate"
                    )
            fresh = [c for c in by_serial.values() if c.serial not in known]
            rows: list[Certificate] = []
            if fresh:
                rows = (
                    conn.cursor(row_factory=class_row(Certificate))
                    .execute(
                        f"INSERT INTO certificates AS c"
                        f" (serial, device_id, fingerprint, not_before, not_after)"
                        f" SELECT * FROM unnest(%s::numeric[], %s::text[], %s::text[],"
                        f" %s::timestamptz[], %s::timestamptz[]) RETURNING {_CERT_COLS}",
                        (
                            [str(c.serial) for c in fresh],
                            [c.device_id for c in fresh],
                            [c.fingerprint for c in fresh],
                            [c.not_before for c in fresh],
                            [c.not_after for c in fresh],
                        ),
                    )
                    .fetchall()
                )
            stored = {**known, **{c.serial: c for c in rows}}
            changes = [Change("certificate.record", f"device:{c.device_id}", None, c) for c in rows]
            self._audit_each(
                conn,
                actor,
                changes,
                [{"serial": str(c.serial), "fingerprint": c.fingerprint} for c in rows],
            )
        return Result([stored[s] for s in by_serial], changes)

    def record_certificate(
        self, customer_id: str, certificate: Certificate, *, actor: str
    ) -> Certificate:
        """Record one issued certificate."""
        return self.record_certificates(customer_id, [certificate], actor=actor).items[0]

    def revoke_certificates(
        self,
        customer_id: str,
        serials: Iterable[int],
        *,
        actor: str,
        reason: str = "superseded",
    ) -> Result:
        """Revoke single certificates (the old one after a rotation); idempotent."""
        validation.customer_id(customer_id)
        _check_actor(actor)
        _check_reason(reason)
        wanted = _unique(validation.serial_number(s, "certificate serial") for s in serials)
        with self._tx() as conn:
            current = {
                c.serial: c
                for c in conn.cursor(row_factory=class_row(Certificate)).execute(
                    f"SELECT {_CERT_COLS} FROM certificates c JOIN devices d ON d.id = c.device_id"
                    f" WHERE d.customer_id = %s AND c.serial = ANY(%s::numeric[]) FOR UPDATE OF c",
                    (customer_id, [str(s) for s in wanted]),
                )
            }
            for serial in wanted:
                if serial not in current:
                    raise NotFound(f"certificate {serial} of customer {customer_id!r} not found")
            todo = [s for s in wanted if current[s].revoked_at is None]
            rows = (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"UPDATE certificates c SET revoked_at = now(), revocation_reason = %s"
                    f" WHERE c.serial = ANY(%s::numeric[]) RETURNING {_CERT_COLS}",
                    (reason, [str(s) for s in todo]),
                )
                .fetchall()
            )
            after = {**current, **{c.serial: c for c in rows}}
            changes = [
                Change("certificate.revoke", f"device:{c.device_id}", current[c.serial], c)
                for c in rows
            ]
            self._audit_each(
                conn, actor, changes, [{"serial": str(c.serial), "reason": reason} for c in rows]
            )
        return Result([after[s] for s in wanted], changes)

    def certificates(self, customer_id: str, device_id: str) -> list[Certificate]:
        """Every certificate of one device, oldest first."""
        self.get_device(customer_id, device_id)
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"SELECT {_CERT_COLS} FROM certificates c WHERE c.device_id = %s"
                    " ORDER BY c.not_before, c.serial",
                    (device_id,),
                )
                .fetchall()
            )

    def current_serials(self, device_ids: Iterable[str] | None = None) -> dict[str, frozenset[int]]:
        """Serials of each device's current certificates: in validity and not revoked."""
        ids = None if device_ids is None else [validation.device_id(d) for d in device_ids]
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT device_id, serial FROM certificates WHERE revoked_at IS NULL"
                " AND not_before <= now() AND not_after > now()"
                " AND (%(ids)s::text[] IS NULL OR device_id = ANY(%(ids)s::text[]))",
                {"ids": ids},
            ).fetchall()
        serials: dict[str, set[int]] = {}
        for device_id, serial in rows:
            serials.setdefault(device_id, set()).add(int(serial))
        return {d: frozenset(s) for d, s in serials.items()}

    def revoked_certificates(self) -> list[Certificate]:
        """Every revoked certificate, for the CRL."""
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(Certificate))
                .execute(
                    f"SELECT {_CERT_COLS} FROM certificates c WHERE c.revoked_at IS NOT NULL"
                    " ORDER BY c.revoked_at, c.serial"
                )
                .fetchall()
            )

    # -- connections (the gateway agent) -----------------------------------------------------

    def gateway_snapshot(self) -> Snapshot:
        """Every device with its address, state and current serials, in one query."""
        # Addresses as integers and serials as one string: at 100,000 devices, parsing dotted
        # quads and arrays in Python would cost more than the query itself.
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT d.id, d.customer_id, d.vpn_address - '0.0.0.0'::inet, d.state,"
                " string_agg(c.serial::text, ',')"
                " FROM devices d LEFT JOIN certificates c ON c.device_id = d.id"
                " AND c.revoked_at IS NULL AND c.not_before <= now() AND c.not_after > now()"
                " GROUP BY d.id"
            ).fetchall()
        taken_at = time.time()
        empty: frozenset[int] = frozenset()
        return Snapshot(
            {
                device_id: DeviceGrant(
                    device_id,
                    customer_id,
                    IPv4Address(address),
                    state,
                    frozenset(map(int, serials.split(","))) if serials else empty,
                )
                for device_id, customer_id, address, state, serials in rows
            },
            taken_at,
        )

    def revoked_serials(self) -> set[int]:
        """Serials of every revoked certificate (the gateways' crl-verify directory)."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT serial::text FROM certificates WHERE revoked_at IS NOT NULL"
            ).fetchall()
        return {int(row[0]) for row in rows}

    def record_connect(
        self,
        device_id: str,
        gateway: str,
        *,
        address: str | None = None,
        at: datetime | None = None,
    ) -> Device:
        """The device connected through gateway at `at` (default now): it owns the device now.

        A connect older than the newest one already recorded for the device (a gateway replaying
        its spool after an outage, while the device has moved on) is logged and changes nothing.
        """
        event = ConnectionEvent(device_id, gateway, "connect", at, address)
        with self._tx() as conn:
            outcome = self._record_events(conn, [event])[0]
            if outcome == "not_found":
                raise NotFound(f"device {device_id!r} not found")
            if outcome == "refused":
                raise InvalidValue("device id", device_id, "is revoked: connection refused")
            return self._devices(conn, "d.id = %s", [device_id])[0]

    def record_disconnect(
        self,
        device_id: str,
        gateway: str,
        *,
        address: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Log a disconnect; it counts (and returns True) only if gateway still owns the device."""
        event = ConnectionEvent(device_id, gateway, "disconnect", at, address)
        with self._tx() as conn:
            outcome = self._record_events(conn, [event])[0]
        if outcome == "not_found":
            raise NotFound(f"device {device_id!r} not found")
        return outcome == "applied"

    def record_connection_events(self, events: Sequence[ConnectionEvent]) -> list[str]:
        """Record a gateway's connects/disconnects in order, in three statements for any number.

        Each event's outcome, in order: "applied" (it changed who owns the device or whether it
        is connected), "logged" (history only: a stale connect, a disconnect from a gateway that
        does not own the device), "refused" (a connect of a revoked device) or "not_found".
        """
        with self._tx() as conn:
            return self._record_events(conn, events)

    def _record_events(
        self, conn: psycopg.Connection, events: Sequence[ConnectionEvent]
    ) -> list[str]:
        events = [_check_event(e) for e in events]
        if not events:
            return []
        now = _db_now(conn)
        # Devices locked in id order: two gateways' batches cannot deadlock.
        rows = conn.execute(
            "SELECT d.id, d.state, d.connected, d.gateway, d.last_seen,"
            " (SELECT max(e.at) FROM connection_events e WHERE e.device_id = d.id"
            "  AND e.event = 'connect')"
            " FROM devices d WHERE d.id = ANY(%s) ORDER BY d.id FOR UPDATE",
            (_unique(e.device_id for e in events),),
        ).fetchall()
        state = {row[0]: list(row[1:]) for row in rows}  # state, connected, gateway, seen, latest
        changed: set[str] = set()
        logged: list[tuple[ConnectionEvent, datetime, str | None]] = []
        outcomes = []
        for event in events:
            device = state.get(event.device_id)
            if device is None:
                outcomes.append("not_found")
                continue
            at = event.at or now
            if event.event == "connect" and device[0] == "revoked":
                outcomes.append("refused")
                continue
            logged.append((event, at, _remote_address(event.address)))
            status, connected, owner, seen, latest = device
            if event.event == "connect":
                device[4] = at if latest is None else max(latest, at)
                if latest is not None and at < latest:
                    outcomes.append("logged")  # the device has connected somewhere since
                    continue
                device[:4] = ["active" if status == "provisioned" else status, True,
                              event.gateway, at if seen is None else max(seen, at)]  # fmt: skip
            else:
                # A late disconnect from the gateway the device left must not undo its new tunnel.
                if owner != event.gateway or not connected:
                    outcomes.append("logged")
                    continue
                device[1:4] = [False, owner, at if seen is None else max(seen, at)]
            changed.add(event.device_id)
            outcomes.append("applied")
        if logged:
            conn.execute(
                # Ids follow the order the rows come in: the batch's order.
                "INSERT INTO connection_events (device_id, gateway, event, address, at)"
                " SELECT d, g, e, a, t FROM unnest(%s::text[], %s::text[], %s::text[],"
                " %s::inet[], %s::timestamptz[]) WITH ORDINALITY AS u(d, g, e, a, t, n)"
                " ORDER BY n",
                (
                    [e.device_id for e, _, _ in logged],
                    [e.gateway for e, _, _ in logged],
                    [e.event for e, _, _ in logged],
                    [a for _, _, a in logged],
                    [at for _, at, _ in logged],
                ),
            )
        if changed:
            ids = sorted(changed)
            conn.execute(
                "UPDATE devices d SET state = u.state, connected = u.connected,"
                " gateway = u.gateway, last_seen = u.seen"
                " FROM unnest(%s::text[], %s::text[], %s::bool[], %s::text[], %s::timestamptz[])"
                " AS u(id, state, connected, gateway, seen) WHERE d.id = u.id",
                (
                    ids,
                    [state[i][0] for i in ids],
                    [state[i][1] for i in ids],
                    [state[i][2] for i in ids],
                    [state[i][3] for i in ids],
                ),
            )
        return outcomes

    def disconnect_gateway(self, gateway: str) -> int:
        """Mark every device of a gateway disconnected (the gateway restarted); return how many."""
        _check_gateway(gateway)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE devices SET connected = false WHERE gateway = %s AND connected", (gateway,)
            )
            return cur.rowcount

    def _device_for_update(self, conn: psycopg.Connection, device_id: str) -> Device:
        rows = self._devices(conn, "d.id = %s", [device_id], lock=True)
        if not rows:
            raise NotFound(f"device {device_id!r} not found")
        return rows[0]

    # -- audit -------------------------------------------------------------------------------

    def audit_log(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Latest audit entries, newest first, optionally of one target ("device:<id>")."""
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(AuditEntry))
                .execute(
                    "SELECT at, actor, action, target, detail FROM audit_log"
                    " WHERE %(t)s::text IS NULL OR target = %(t)s ORDER BY id DESC LIMIT %(n)s",
                    {"t": target, "n": limit},
                )
                .fetchall()
            )

    def _audit(
        self, conn: psycopg.Connection, actor: str, changes: list[Change], detail: dict[str, Any]
    ) -> None:
        self._audit_each(conn, actor, changes, [detail] * len(changes))

    def _audit_each(
        self,
        conn: psycopg.Connection,
        actor: str,
        changes: list[Change],
        details: list[dict[str, Any]],
    ) -> None:
        if not changes:
            return
        # One round trip for any number of entries.
        conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail) SELECT %s, a, t, d::jsonb"
            " FROM unnest(%s::text[], %s::text[], %s::text[]) AS x(a, t, d)",
            (
                actor,
                [c.action for c in changes],
                [c.target for c in changes],
                [json.dumps(d) for d in details],
            ),
        )


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


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    folder = importlib.resources.files(__package__).joinpath("migrations")
    if not folder.is_dir():
        # Ansible bundles only the .py files of module_utils; the SQL then comes from the
        # iotistic-vpn package installed next to the interpreter that runs the module.
        try:
            folder = importlib.resources.files("iotistic_vpn").joinpath("migrations")
        except ModuleNotFoundError:
            raise RegistryConflict(
                "the schema migrations ship with the iotistic-vpn package: install it for the "
                "Python that runs this code"
            ) from None
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name.removesuffix(".sql"), entry.read_text()))
    if not found:
        raise RegistryConflict(f"no migrations found in {folder}")
    return sorted(found)


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _check_actor(actor: object) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise InvalidValue("actor", actor, "name who makes the change (a non-empty string)")


def _check_reason(reason: object) -> None:
    if reason not in REVOCATION_REASONS:
        raise InvalidValue(
            "revocation reason", reason, f"use one of {', '.join(REVOCATION_REASONS)}"
        )


def _check_gateway(gateway: object) -> None:
    if not isinstance(gateway, str) or not _GATEWAY_RE.fullmatch(gateway):
        raise InvalidValue(
            "gateway", gateway, "use 1-63 letters, digits, dots, hyphens, underscores"
        )


def _check_event(event: ConnectionEvent) -> ConnectionEvent:
    validation.device_id(event.device_id)
    _check_gateway(event.gateway)
    if event.event not in ("connect", "disconnect"):
        raise InvalidValue("connection event", event.event, "use connect or disconnect")
    if event.at is not None and (not isinstance(event.at, datetime) or event.at.tzinfo is None):
        raise InvalidValue(f"{event.event} time", event.at, "must be a timezone-aware datetime")
    _remote_address(event.address)
    return event


def _remote_address(address: str | None) -> str | None:
    """The IPv4 address of "ip" or "ip:port", or None."""
    if address is None:
        return None
    try:
        return str(IPv4Address(address.split(":")[0]))
    except ValueError:
        raise InvalidValue("device remote address", address, "not an IPv4 address") from None


def _db_now(conn: psycopg.Connection) -> datetime:
    """The transaction's now(), so an event without a time of its own gets the server's."""
    return conn.execute("SELECT now()").fetchone()[0]


def _check_certificate(cert: Certificate) -> Certificate:
    validation.device_id(cert.device_id)
    if isinstance(cert.serial, bool) or not isinstance(cert.serial, int):
        raise InvalidValue("certificate serial", cert.serial, "must be an integer")
    validation.serial_number(cert.serial, "certificate serial")
    fingerprint = str(cert.fingerprint).replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        raise InvalidValue("certificate fingerprint", cert.fingerprint, "must be a SHA-256 in hex")
    for name in ("not_before", "not_after"):
        value = getattr(cert, name)
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidValue(f"certificate {name}", value, "must be a timezone-aware datetime")
    if cert.not_after <= cert.not_before:
        raise InvalidValue("certificate not_after", cert.not_after, "must be after not_before")
    return Certificate(cert.serial, cert.device_id, fingerprint, cert.not_before, cert.not_after)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}

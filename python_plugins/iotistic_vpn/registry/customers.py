"""Customers and their address blocks."""

# The f-strings below splice in only this package's column lists; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

from ipaddress import IPv4Network

import psycopg
from psycopg.rows import class_row

from .. import validation
from ..addressing import (
    allocate_block,
    gateway_network,
)
from ..errors import InvalidValue, NotFound
from .models import _CUSTOMER_COLS, Change, Customer, Result

_BLOCK_LOCK = 0x10715_0002


class CustomerQueries:
    """Customers: created with a block of their own, read, removed."""

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
        validation.actor(actor)
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

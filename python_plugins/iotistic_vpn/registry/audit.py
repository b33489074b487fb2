"""The audit log: every change and every API request, who made it and what it touched.

Partitioned by month (migration 0003): `maintain_audit` makes the coming months' partitions
and drops the ones past retention, a whole month at a time.
"""

# The f-strings below splice in only this module's column names; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from .. import validation
from ..errors import InvalidValue
from .models import (
    ApiToken,
    AuditEntry,
    Certificate,
    Change,
    Customer,
    Device,
    ProvisioningToken,
    RequestRecord,
)

_COLUMNS = "id, at, actor, action, target, detail, customer_id, device_id, token_id"
MONTHS_AHEAD = 2


def _scope(change: Change) -> tuple[str | None, str | None, str | None]:
    """(customer, device, token) a change touched, for the log's filter columns."""
    row = change.after or change.before
    if isinstance(row, Customer):
        return row.id, None, None
    if isinstance(row, Device):
        return row.customer_id, row.id, None
    if isinstance(row, Certificate):
        return None, row.device_id, None
    if isinstance(row, ApiToken | ProvisioningToken):
        return row.customer_id, None, row.id
    return None, None, None


class AuditQueries:
    """Reading and writing the audit log."""

    def audit_log(
        self,
        target: str | None = None,
        limit: int = 100,
        *,
        customer_id: str | None = None,
        device_id: str | None = None,
        token_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
    ) -> list[AuditEntry]:
        """Entries matching every filter; newest first, or oldest first after after_id (follow)."""
        if customer_id is not None:
            validation.customer_id(customer_id)
        if device_id is not None:
            validation.device_id(device_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 10000:
            raise InvalidValue("audit limit", limit, "must be between 1 and 10000")
        clauses, params = [], {}
        for column, value in (("target", target), ("customer_id", customer_id),
                              ("device_id", device_id), ("token_id", token_id),
                              ("action", action)):  # fmt: skip
            if value is not None:
                clauses.append(f"{column} = %({column})s")
                params[column] = value
        if since is not None:
            clauses.append("at >= %(since)s")
            params["since"] = since
        if until is not None:
            clauses.append("at < %(until)s")
            params["until"] = until
        order = "id DESC"
        if after_id is not None:
            clauses.append("id > %(after)s")
            params["after"] = after_id
            order = "id"
        where = " AND ".join(clauses) or "true"
        params["n"] = limit
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(AuditEntry))
                .execute(
                    f"SELECT {_COLUMNS} FROM audit_log WHERE {where} ORDER BY {order} LIMIT %(n)s",
                    params,
                )
                .fetchall()
            )

    def record_requests(self, records: Sequence[RequestRecord]) -> int:
        """Append API requests to the audit log in one statement; return how many."""
        if not records:
            return 0
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, target, detail, customer_id, device_id,"
                " token_id) SELECT at, actor, 'request', target, d::jsonb, c, dv, tk FROM unnest("
                "%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[]) AS x(at, actor, target, d, c, dv, tk)",
                (
                    [r.at for r in records],
                    [f"token:{r.token_id}" if r.token_id else "anonymous" for r in records],
                    [f"device:{r.device_id}" if r.device_id else r.path for r in records],
                    [json.dumps(r.detail()) for r in records],
                    [r.customer_id for r in records],
                    [r.device_id for r in records],
                    [r.token_id for r in records],
                ),
            )
        return len(records)

    def maintain_audit(self, retention_months: int) -> tuple[list[str], list[str]]:
        """Make the coming months' partitions, drop those past retention: (made, dropped)."""
        if (
            isinstance(retention_months, bool)
            or not isinstance(retention_months, int)
            or (retention_months < 1)
        ):
            raise InvalidValue(
                "audit retention", retention_months, "must be a whole number of months >= 1"
            )
        with self._tx() as conn:
            before = set(_partitions(conn))
            for months in range(MONTHS_AHEAD + 1):
                conn.execute(
                    "SELECT audit_log_month((now() + make_interval(months => %s))::date)", (months,)
                )
            made = sorted(set(_partitions(conn)) - before)
            # Dropping a table is the owner's: audit_log_drop_before runs as it (migration 0007).
            rows = conn.execute(
                "SELECT audit_log_drop_before("
                "(date_trunc('month', now()) - make_interval(months => %s))::date)",
                (retention_months,),
            ).fetchall()
        return made, [row[0] for row in rows]

    def _audit(
        self, conn: psycopg.Connection, actor: str, changes: list[Change], detail: dict[str, Any]
    ) -> None:
        self._audit_each(conn, actor, changes, [detail] * len(changes))

    def _audit_one(
        self, actor: str, action: str, target: str, detail: dict, *,
        customer_id: str | None = None, device_id: str | None = None,
        token_id: str | None = None,
    ) -> None:  # fmt: skip
        """Append one entry that is not a row's change (an enrollment's, a renewal's outcome)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO audit_log (actor, action, target, detail, customer_id, device_id,"
                " token_id) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s)",
                (actor, action, target, json.dumps(detail), customer_id, device_id, token_id),
            )

    def _audit_each(
        self,
        conn: psycopg.Connection,
        actor: str,
        changes: list[Change],
        details: list[dict[str, Any]],
    ) -> None:
        if not changes:
            return
        scopes = [_scope(c) for c in changes]
        # One round trip for any number of entries.
        conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail, customer_id, device_id,"
            " token_id) SELECT %s, a, t, d::jsonb, c, dv, tk FROM unnest(%s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::text[], %s::text[]) AS x(a, t, d, c, dv, tk)",
            (
                actor,
                [c.action for c in changes],
                [c.target for c in changes],
                [json.dumps(d) for d in details],
                [s[0] for s in scopes],
                [s[1] for s in scopes],
                [s[2] for s in scopes],
            ),
        )


def _partitions(conn: psycopg.Connection) -> list[str]:
    """The month partitions of the audit log, oldest first (YYYY_MM names sort by time)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_log'::regclass AND c.relname ~ '^audit_log_[0-9]{4}_[0-9]{2}$'"
        " ORDER BY c.relname"
    ).fetchall()
    return [row[0] for row in rows]

"""The audit log: every change, who made it and what it changed."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.rows import class_row

from .models import AuditEntry, Change


class AuditQueries:
    """Reading and writing the audit log."""

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

"""Provisioning tokens: made idempotently by name, listed, revoked, and used up by enrollments."""

# The f-strings below splice in only this module's column list; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import re
from datetime import datetime

from psycopg.rows import class_row

from .. import tokens, validation
from ..errors import InvalidValue, NotFound
from .models import Change, ProvisioningToken, Result

_COLUMNS = (
    "p.id, p.customer_id, p.name, p.expires_at, p.max_uses, p.uses, p.device_pattern,"
    " p.created_at, p.revoked_at"
)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}")
MAX_USES = 1_000_000


def _check(name: object, expires_at: object, max_uses: object, pattern: object) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidValue(
            "provisioning token name", name,
            "use 1-63 letters, digits, spaces, dots, hyphens, underscores",
        )  # fmt: skip
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise InvalidValue(
            "provisioning token expiry", expires_at, "must be a timezone-aware datetime"
        )
    if isinstance(max_uses, bool) or not isinstance(max_uses, int) or not 0 < max_uses <= MAX_USES:
        raise InvalidValue("provisioning token max_uses", max_uses, f"use 1 to {MAX_USES:,}")
    if pattern is not None:
        validation.device_glob(pattern)


class ProvisioningTokenQueries:
    """Provisioning tokens of customers."""

    def ensure_provisioning_token(
        self,
        customer_id: str,
        name: str,
        *,
        actor: str,
        expires_at: datetime,
        max_uses: int = 1,
        device_pattern: str | None = None,
    ) -> tuple[Result, tokens.IssuedToken | None]:
        """The customer's live token of this name; made if absent (its value returned once).

        A live token whose scope differs is not changed silently: revoke it and make it anew.
        """
        validation.customer_id(customer_id)
        validation.actor(actor)
        _check(name, expires_at, max_uses, device_pattern)
        with self._tx() as conn:
            self._lock_customer(conn, customer_id)  # NotFound for an unknown customer
            current = (
                conn.cursor(row_factory=class_row(ProvisioningToken))
                .execute(
                    f"SELECT {_COLUMNS} FROM provisioning_tokens p WHERE p.customer_id = %s"
                    " AND p.name = %s AND p.revoked_at IS NULL FOR UPDATE",
                    (customer_id, name),
                )
                .fetchone()
            )
            if current is not None:
                if (current.expires_at, current.max_uses, current.device_pattern) != (
                    expires_at, max_uses, device_pattern,
                ):  # fmt: skip
                    raise InvalidValue(
                        "provisioning token", name,
                        "a live token of this name has another scope; revoke it first",
                    )  # fmt: skip
                return Result([current], []), None
            issued = tokens.new_token(tokens.PROVISIONING_PREFIX)
            token = (
                conn.cursor(row_factory=class_row(ProvisioningToken))
                .execute(
                    "INSERT INTO provisioning_tokens AS p (id, customer_id, name, secret_hash,"
                    " expires_at, max_uses, device_pattern) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    f" RETURNING {_COLUMNS}",
                    (
                        issued.id,
                        customer_id,
                        name,
                        issued.secret_hash,
                        expires_at,
                        max_uses,
                        device_pattern,
                    ),
                )
                .fetchone()
            )
            change = Change("provisioning_token.create", f"provisioning_token:{token.id}",
                            None, token)  # fmt: skip
            self._audit(conn, actor, [change], _detail(token))
            return Result([token], [change]), issued

    def revoke_provisioning_token(
        self, token_id: str, *, actor: str, customer_id: str | None = None
    ) -> Result:
        """Revoke one by id (of customer_id only, if given); revoking twice changes nothing."""
        validation.actor(actor)
        with self._tx() as conn:
            current = self._provisioning_token(conn, token_id, customer_id, lock=True)
            if current.revoked_at is not None:
                return Result([current], [])
            after = (
                conn.cursor(row_factory=class_row(ProvisioningToken))
                .execute(
                    "UPDATE provisioning_tokens p SET revoked_at = now() WHERE id = %s"
                    f" RETURNING {_COLUMNS}",
                    (token_id,),
                )
                .fetchone()
            )
            change = Change("provisioning_token.revoke", f"provisioning_token:{token_id}",
                            current, after)  # fmt: skip
            self._audit(conn, actor, [change], _detail(after))
            return Result([after], [change])

    def list_provisioning_tokens(
        self, customer_id: str | None = None, *, include_revoked: bool = False
    ) -> list[ProvisioningToken]:
        """Tokens, of one customer or all, oldest first."""
        if customer_id is not None:
            validation.customer_id(customer_id)
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(ProvisioningToken))
                .execute(
                    f"SELECT {_COLUMNS} FROM provisioning_tokens p"
                    " WHERE (%(c)s::text IS NULL OR p.customer_id = %(c)s)"
                    " AND (%(all)s OR p.revoked_at IS NULL) ORDER BY p.created_at, p.id",
                    {"c": customer_id, "all": include_revoked},
                )
                .fetchall()
            )

    def provisioning_token(self, value: str) -> tuple[ProvisioningToken, datetime] | None:
        """(the token a presented string is, the database's now), revoked, expired or used up
        alike; None when it is no token of ours (malformed, unknown id, wrong secret)."""
        try:
            token_id, secret = tokens.parse_token(value, tokens.PROVISIONING_PREFIX)
        except InvalidValue:
            return None
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT p.secret_hash, now(), {_COLUMNS} FROM provisioning_tokens p"
                " WHERE p.id = %s",
                (token_id,),
            ).fetchone()
        if row is None or not tokens.secret_matches(secret, row[0]):
            return None
        return ProvisioningToken(*row[2:]), row[1]

    def consume_provisioning_token(self, token_id: str) -> ProvisioningToken | None:
        """Take one use, atomically; None when the token is revoked, expired or used up.

        Run it in the transaction that provisions the device: if that fails, the use is
        given back with it. Concurrent enrollments queue on the row: one takes the last use.
        """
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(ProvisioningToken))
                .execute(
                    "UPDATE provisioning_tokens p SET uses = uses + 1 WHERE id = %s"
                    " AND uses < max_uses AND expires_at > now() AND revoked_at IS NULL"
                    f" RETURNING {_COLUMNS}",
                    (token_id,),
                )
                .fetchone()
            )

    def record_enrollment(
        self,
        outcome: str,
        *,
        token_id: str | None,
        customer_id: str | None,
        device_id: str | None,
        detail: dict,
    ) -> None:
        """One enrollment's audit entry: `enroll` (done) or `enroll.refused`, with the token's
        id (never its secret), the device asked for and where the request came from."""
        if outcome not in ("enroll", "enroll.refused"):
            raise InvalidValue("enrollment outcome", outcome, "use enroll or enroll.refused")
        actor = f"provisioning_token:{token_id}" if token_id else "anonymous"
        target = f"device:{device_id}" if device_id else "enroll"
        self._audit_one(actor, outcome, target, detail, customer_id=customer_id,
                        device_id=device_id, token_id=token_id)  # fmt: skip

    def _provisioning_token(
        self, conn, token_id: str, customer_id: str | None, *, lock: bool = False
    ) -> ProvisioningToken:
        if not isinstance(token_id, str) or not re.fullmatch(r"[0-9a-f]{16}", token_id):
            raise InvalidValue(
                "provisioning token id", token_id, "use the 16 hex characters of a token id"
            )
        token = (
            conn.cursor(row_factory=class_row(ProvisioningToken))
            .execute(
                f"SELECT {_COLUMNS} FROM provisioning_tokens p WHERE p.id = %s"
                " AND (%s::text IS NULL OR p.customer_id = %s)" + (" FOR UPDATE" if lock else ""),
                (token_id, customer_id, customer_id),
            )
            .fetchone()
        )
        if token is None:
            # Another customer's token answers exactly like one that does not exist.
            raise NotFound(f"provisioning token {token_id!r} not found")
        return token


def _detail(token: ProvisioningToken) -> dict:
    """What the audit log keeps of a token: its scope, never its secret."""
    return {
        "name": token.name,
        "customer": token.customer_id,
        "expires_at": token.expires_at.isoformat(),
        "max_uses": token.max_uses,
        "device_pattern": token.device_pattern,
    }

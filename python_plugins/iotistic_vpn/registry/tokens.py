"""API tokens: created idempotently by name, listed, revoked, and checked on every request."""

# The f-strings below splice in only this module's column list; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from psycopg.rows import class_row

from .. import conventions, tokens, validation
from ..errors import InvalidValue, NotFound
from .models import ApiToken, Change, Result

_COLUMNS = (
    "t.id, t.name, t.customer_id, t.devices, t.ports, t.read_only, t.expires_at, t.created_at,"
    " t.revoked_at"
)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}")


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidValue(
            "token name", name, "use 1-63 letters, digits, spaces, dots, hyphens, underscores"
        )
    return name


def _check_ports(ports: Iterable[int]) -> list[int]:
    out = sorted(set(ports))
    bad = [p for p in out if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536]
    if not out or bad:
        raise InvalidValue("token ports", bad or out, "give at least one TCP port (1-65535)")
    return out


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and (
        not isinstance(expires_at, datetime) or expires_at.tzinfo is None
    ):
        raise InvalidValue("token expiry", expires_at, "must be a timezone-aware datetime")


class TokenQueries:
    """Customer and operator API tokens."""

    def ensure_token(
        self,
        name: str,
        *,
        customer_id: str | None,
        actor: str,
        devices: Iterable[str] | None = None,
        ports: Iterable[int] = (conventions.DEVICE_AGENT_PORT,),
        read_only: bool = True,
        expires_at: datetime | None = None,
    ) -> tuple[Result, tokens.IssuedToken | None]:
        """The live token of this name (customer_id None: an operator's); create it if absent.

        Returns the result and, only when the token was created now, its one-time value. A
        live token whose scope differs is not changed silently: revoke it and create anew.
        """
        _check_name(name)
        validation.actor(actor)
        if customer_id is not None:
            validation.customer_id(customer_id)
        elif devices is not None:
            raise InvalidValue("token devices", list(devices), "an operator token spans devices")
        device_list = (
            None if devices is None else sorted({validation.device_id(d) for d in devices})
        )
        port_list = _check_ports(ports)
        _check_expiry(expires_at)
        with self._tx() as conn:
            if customer_id is not None:
                # Fails with NotFound before a token can name a customer that does not exist.
                self._lock_customer(conn, customer_id)
            current = self._live_token(conn, name, customer_id)
            wanted = (device_list, port_list, bool(read_only), expires_at)
            if current is not None:
                have = (
                    None if current.devices is None else sorted(current.devices),
                    list(current.ports),
                    current.read_only,
                    current.expires_at,
                )
                if have != wanted:
                    raise InvalidValue(
                        "token",
                        name,
                        "a live token of this name has another scope; revoke it first",
                    )
                return Result([current], []), None
            issued = tokens.new_token()
            token = (
                conn.cursor(row_factory=class_row(ApiToken))
                .execute(
                    "INSERT INTO api_tokens AS t (id, name, customer_id, secret_hash, devices,"
                    " ports, read_only, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    f" RETURNING {_COLUMNS}",
                    (
                        issued.id,
                        name,
                        customer_id,
                        issued.secret_hash,
                        device_list,
                        port_list,
                        bool(read_only),
                        expires_at,
                    ),
                )
                .fetchone()
            )
            change = Change("token.create", f"token:{token.id}", None, token)
            self._audit(conn, actor, [change], _token_detail(token))
            return Result([token], [change]), issued

    def revoke_token(self, token_id: str, *, actor: str) -> Result:
        """Revoke a token by id; revoking a revoked token changes nothing."""
        validation.actor(actor)
        with self._tx() as conn:
            current = self._token(conn, token_id, lock=True)
            if current.revoked_at is not None:
                return Result([current], [])
            after = (
                conn.cursor(row_factory=class_row(ApiToken))
                .execute(
                    "UPDATE api_tokens t SET revoked_at = now() WHERE id = %s"
                    f" RETURNING {_COLUMNS}",
                    (token_id,),
                )
                .fetchone()
            )
            change = Change("token.revoke", f"token:{token_id}", current, after)
            self._audit(conn, actor, [change], _token_detail(after))
            return Result([after], [change])

    def list_tokens(
        self, customer_id: str | None = None, *, include_revoked: bool = False
    ) -> list[ApiToken]:
        """Tokens, of one customer or all, oldest first."""
        if customer_id is not None:
            validation.customer_id(customer_id)
        with self._tx() as conn:
            return (
                conn.cursor(row_factory=class_row(ApiToken))
                .execute(
                    f"SELECT {_COLUMNS} FROM api_tokens t"
                    " WHERE (%(c)s::text IS NULL OR t.customer_id = %(c)s)"
                    " AND (%(all)s OR t.revoked_at IS NULL) ORDER BY t.created_at, t.id",
                    {"c": customer_id, "all": include_revoked},
                )
                .fetchall()
            )

    def get_token(self, token_id: str) -> ApiToken:
        """One token by id, revoked or not, else NotFound."""
        with self._tx() as conn:
            return self._token(conn, token_id)

    def authenticate(self, value: str) -> ApiToken | None:
        """The live token a presented string is, or None (malformed, unknown, wrong, revoked
        or expired all answer None alike)."""
        try:
            token_id, secret = tokens.parse_token(value)
        except InvalidValue:
            return None
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT t.secret_hash, now(), {_COLUMNS} FROM api_tokens t WHERE t.id = %s",
                (token_id,),
            ).fetchone()
        if row is None or not tokens.secret_matches(secret, row[0]):
            return None
        token = ApiToken(*row[2:])
        return token if token.live(row[1]) else None

    def _live_token(self, conn, name: str, customer_id: str | None) -> ApiToken | None:
        return (
            conn.cursor(row_factory=class_row(ApiToken))
            .execute(
                f"SELECT {_COLUMNS} FROM api_tokens t WHERE t.name = %s"
                " AND t.customer_id IS NOT DISTINCT FROM %s AND t.revoked_at IS NULL FOR UPDATE",
                (name, customer_id),
            )
            .fetchone()
        )

    def _token(self, conn, token_id: str, *, lock: bool = False) -> ApiToken:
        if not isinstance(token_id, str) or not re.fullmatch(r"[0-9a-f]{16}", token_id):
            raise InvalidValue("token id", token_id, "use the 16 hex characters of a token id")
        token = (
            conn.cursor(row_factory=class_row(ApiToken))
            .execute(
                f"SELECT {_COLUMNS} FROM api_tokens t WHERE t.id = %s"
                + (" FOR UPDATE" if lock else ""),
                (token_id,),
            )
            .fetchone()
        )
        if token is None:
            raise NotFound(f"token {token_id!r} not found")
        return token


def _token_detail(token: ApiToken) -> dict:
    """What the audit log keeps of a token: its scope, never its secret."""
    return {
        "name": token.name,
        "customer": token.customer_id,
        "devices": token.devices and list(token.devices),
        "ports": list(token.ports),
        "read_only": token.read_only,
        "expires_at": token.expires_at and token.expires_at.isoformat(),
    }

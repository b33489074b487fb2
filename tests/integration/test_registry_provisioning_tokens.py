"""Provisioning tokens in the registry: shown once, kept as a hash, used up atomically."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from iotistic_vpn import tokens
from iotistic_vpn.errors import InvalidValue, NotFound
from iotistic_vpn.registry import Registry

pytestmark = pytest.mark.postgres

LATER = datetime.now(UTC) + timedelta(days=7)


@pytest.fixture
def reg(registry_dsn):
    with Registry(registry_dsn) as registry:
        registry.ensure_customer("acme", actor="t")
        registry.ensure_customer("globex", actor="t")
        yield registry


def test_a_token_is_shown_once_kept_as_a_hash_and_idempotent_by_name(reg, registry_dsn):
    result, issued = reg.ensure_provisioning_token(
        "acme", "factory", actor="ops", expires_at=LATER, max_uses=5, device_pattern="pump-*"
    )
    assert result.changed and issued.value.startswith(f"ivpp_{issued.id}_")
    secret = tokens.parse_token(issued.value, tokens.PROVISIONING_PREFIX)[1]
    with psycopg.connect(registry_dsn) as conn:
        rows = conn.execute("SELECT row_to_json(p)::text FROM provisioning_tokens p").fetchall()
        audit = conn.execute("SELECT action, detail::text, token_id FROM audit_log").fetchall()
    assert all(secret not in row[0] for row in rows + [(a[1],) for a in audit])
    assert ("provisioning_token.create", issued.id) in {(a[0], a[2]) for a in audit}
    token, _ = reg.provisioning_token(issued.value)
    assert (token.customer_id, token.max_uses, token.uses, token.device_pattern) == (
        "acme", 5, 0, "pump-*",
    )  # fmt: skip
    again, none = reg.ensure_provisioning_token(
        "acme", "factory", actor="ops", expires_at=LATER, max_uses=5, device_pattern="pump-*"
    )
    assert (again.changed, none, again.items[0].id) == (False, None, issued.id)
    with pytest.raises(InvalidValue, match="another scope; revoke it first"):
        reg.ensure_provisioning_token("acme", "factory", actor="ops", expires_at=LATER)
    # An API token string is no provisioning token, and a wrong secret is none either.
    _, api = reg.ensure_token("billing", customer_id="acme", actor="ops")
    assert reg.provisioning_token(api.value) is None
    assert reg.provisioning_token(issued.value[:-2] + "xx") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device_pattern": "pump-[0-9]"}, "device pattern 'pump-\\[0-9\\]'.*a glob"),
        ({"device_pattern": "(a+)+$"}, "device pattern"),
        ({"max_uses": 0}, "max_uses 0.*use 1 to"),
        ({"expires_at": datetime(2030, 1, 1)}, "expiry.*timezone-aware"),
    ],
)
def test_a_bad_scope_is_refused_naming_the_value(reg, kwargs, message):
    with pytest.raises(InvalidValue, match=message):
        reg.ensure_provisioning_token("acme", "bad", actor="ops", **{"expires_at": LATER, **kwargs})
    assert reg.list_provisioning_tokens(include_revoked=True) == []


def test_an_unknown_customer_gets_no_token(reg):
    with pytest.raises(NotFound, match="customer 'initech' not found"):
        reg.ensure_provisioning_token("initech", "x", actor="ops", expires_at=LATER)


def test_consume_stops_at_max_uses_and_a_rolled_back_use_is_given_back(reg):
    _, issued = reg.ensure_provisioning_token("acme", "two", actor="ops", expires_at=LATER,
                                              max_uses=2)  # fmt: skip
    with pytest.raises(RuntimeError), reg.transaction():
        assert reg.consume_provisioning_token(issued.id).uses == 1
        raise RuntimeError("the provisioning failed")
    assert reg.provisioning_token(issued.value)[0].uses == 0
    assert reg.consume_provisioning_token(issued.id).uses == 1
    assert reg.consume_provisioning_token(issued.id).uses == 2
    assert reg.consume_provisioning_token(issued.id) is None
    token, now = reg.provisioning_token(issued.value)
    assert token.uses == 2 and not token.usable(now)


def test_a_revoked_or_expired_token_gives_no_use(reg, registry_dsn):
    _, revoked = reg.ensure_provisioning_token("acme", "r", actor="ops", expires_at=LATER)
    assert reg.revoke_provisioning_token(revoked.id, actor="ops").changed
    assert not reg.revoke_provisioning_token(revoked.id, actor="ops").changed
    assert reg.consume_provisioning_token(revoked.id) is None
    _, old = reg.ensure_provisioning_token("acme", "e", actor="ops", expires_at=LATER)
    with psycopg.connect(registry_dsn) as conn:
        conn.execute("UPDATE provisioning_tokens SET expires_at = now() - interval '1 s'"
                     " WHERE id = %s", (old.id,))  # fmt: skip
    assert reg.consume_provisioning_token(old.id) is None
    assert [t.name for t in reg.list_provisioning_tokens("acme")] == ["e"]
    assert [t.name for t in reg.list_provisioning_tokens("acme", include_revoked=True)] == [
        "r", "e",
    ]  # fmt: skip


def test_a_customer_scoped_revoke_does_not_see_another_customers_token(reg):
    _, theirs = reg.ensure_provisioning_token("globex", "g", actor="ops", expires_at=LATER)
    with pytest.raises(NotFound, match=f"provisioning token '{theirs.id}' not found"):
        reg.revoke_provisioning_token(theirs.id, actor="token:x", customer_id="acme")
    assert reg.list_provisioning_tokens("globex")[0].revoked_at is None


def test_concurrent_consumers_of_the_last_use_one_wins(registry_dsn, reg):
    _, issued = reg.ensure_provisioning_token("acme", "last", actor="ops", expires_at=LATER)
    won, barrier = [], threading.Barrier(8)

    def take() -> None:
        with Registry(registry_dsn) as mine:
            barrier.wait()
            won.append(mine.consume_provisioning_token(issued.id) is not None)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]


def test_the_database_refuses_uses_beyond_max(reg, registry_dsn):
    _, issued = reg.ensure_provisioning_token("acme", "db", actor="ops", expires_at=LATER)
    with pytest.raises(psycopg.errors.CheckViolation), psycopg.connect(registry_dsn) as conn:
        conn.execute("UPDATE provisioning_tokens SET uses = 2 WHERE id = %s", (issued.id,))

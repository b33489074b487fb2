"""API tokens in the registry: shown once, kept as a hash, scoped, revoked within the next call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from iotistic_vpn import tokens
from iotistic_vpn.errors import InvalidValue, NotFound
from iotistic_vpn.registry import Registry

pytestmark = pytest.mark.postgres


@pytest.fixture
def reg(registry_dsn):
    with Registry(registry_dsn) as registry:
        registry.ensure_customer("acme", actor="t")
        registry.ensure_customer("globex", actor="t")
        registry.provision_devices("acme", ["pump-1", "pump-2"], actor="t")
        yield registry


def test_a_token_is_shown_once_and_stored_only_as_a_hash(reg, registry_dsn):
    result, issued = reg.ensure_token("billing", customer_id="acme", actor="ops")
    assert result.changed
    assert issued.value.startswith(f"ivpn_{issued.id}_")
    assert issued.value not in repr(issued)
    with psycopg.connect(registry_dsn) as conn:
        stored = conn.execute("SELECT row_to_json(t)::text FROM api_tokens t").fetchall()
        audit = conn.execute("SELECT detail::text FROM audit_log").fetchall()
    secret = tokens.parse_token(issued.value)[1]  # a urlsafe secret may hold "_" itself
    assert all(secret not in row[0] for row in stored + audit)
    token = reg.authenticate(issued.value)
    assert (token.id, token.customer_id, token.ports, token.read_only) == (
        issued.id, "acme", (48484,), True,
    )  # fmt: skip


def test_ensure_is_idempotent_by_name_and_refuses_a_silent_scope_change(reg):
    _, first = reg.ensure_token("dash", customer_id="acme", actor="ops", devices=["pump-1"])
    again, second = reg.ensure_token("dash", customer_id="acme", actor="ops", devices=["pump-1"])
    assert (again.changed, second) == (False, None)
    assert again.items[0].id == first.id
    with pytest.raises(InvalidValue, match="another scope; revoke it first"):
        reg.ensure_token("dash", customer_id="acme", actor="ops", read_only=False)
    # The same name under another customer is another token.
    _, other = reg.ensure_token("dash", customer_id="globex", actor="ops")
    assert other.id != first.id


def test_scope_covers_only_the_customers_devices_ports_and_methods(reg):
    _, issued = reg.ensure_token(
        "pump1-rw", customer_id="acme", actor="ops", devices=["pump-1"], ports=[48484, 22],
        read_only=False,
    )  # fmt: skip
    token = reg.authenticate(issued.value)
    assert token.may_reach("acme", "pump-1")
    assert not token.may_reach("acme", "pump-2")
    assert not token.may_reach("globex", "pump-1")
    assert token.may("POST", 48484) and token.may("GET", 22)
    assert not token.may("GET", 8080)
    _, ro = reg.ensure_token("ro", customer_id="acme", actor="ops")
    read_only = reg.authenticate(ro.value)
    assert read_only.may("GET", 48484) and read_only.may("head", 48484)
    assert not read_only.may("POST", 48484)
    _, op = reg.ensure_token("platform", customer_id=None, actor="ops")
    operator = reg.authenticate(op.value)
    assert operator.operator and operator.may_reach("globex", "anything")


def test_revoked_expired_wrong_and_malformed_tokens_all_fail_alike(reg, registry_dsn):
    _, issued = reg.ensure_token("soon", customer_id="acme", actor="ops")
    token_id, secret = tokens.parse_token(issued.value)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for value in (f"ivpn_{token_id}_{flipped}", "ivpn_0123456789abcdef_" + "x" * 43, "", "x" * 5000,
                  None, "ivpn_" + token_id):  # fmt: skip
        assert reg.authenticate(value) is None
    result = reg.revoke_token(issued.id, actor="ops")
    assert result.changed and result.items[0].revoked_at is not None
    assert reg.authenticate(issued.value) is None
    assert not reg.revoke_token(issued.id, actor="ops").changed
    # A revoked token frees its name; the new one is another token.
    _, fresh = reg.ensure_token("soon", customer_id="acme", actor="ops")
    assert fresh.id != issued.id
    _, old = reg.ensure_token(
        "expired", customer_id="acme", actor="ops",
        expires_at=datetime.now(UTC) + timedelta(seconds=1),
    )  # fmt: skip
    with psycopg.connect(registry_dsn) as conn:
        conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 s' WHERE id = %s",
                     (old.id,))  # fmt: skip
    assert reg.authenticate(old.value) is None
    actions = [e.action for e in reg.audit_log() if e.target.startswith("token:")]
    assert actions.count("token.create") == 3 and actions.count("token.revoke") == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad/name"}, "invalid token name 'bad/name'"),
        ({"ports": [0]}, "invalid token ports"),
        ({"ports": []}, "invalid token ports"),
        ({"devices": ["Pump_1"]}, "invalid device id 'Pump_1'"),
        ({"expires_at": datetime(2030, 1, 1)}, "invalid token expiry"),
        ({"customer_id": None, "devices": ["pump-1"]}, "an operator token spans devices"),
    ],
)
def test_bad_input_is_refused_naming_the_value_and_nothing_is_stored(reg, kwargs, message):
    args = {"name": "ok", "customer_id": "acme", **kwargs}
    with pytest.raises(InvalidValue, match=message):
        reg.ensure_token(args.pop("name"), actor="ops", **args)
    assert reg.list_tokens("acme") == []


def test_unknown_customer_and_token_are_not_found(reg):
    with pytest.raises(NotFound, match="nobody"):
        reg.ensure_token("x", customer_id="nobody", actor="ops")
    with pytest.raises(NotFound, match="0123456789abcdef"):
        reg.revoke_token("0123456789abcdef", actor="ops")
    with pytest.raises(InvalidValue, match="invalid token id"):
        reg.get_token("../etc")

"""The registry's change feed (migration 0006) against the suite's real PostgreSQL.

A reader that holds a cursor learns exactly what was committed since, whatever order the
writers' transactions commit in; presence (connects) is not published; a NOTIFY arrives on
commit and not before; a reader too far behind is told to read everything again.
"""

from __future__ import annotations

import select
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

import psycopg
import pytest

from iotistic_vpn.registry import Certificate, DeviceGrant, Registry
from iotistic_vpn.registry.changes import CHANNEL

pytestmark = pytest.mark.postgres
NOW = datetime.now(UTC)


@pytest.fixture
def reg(registry_dsn):
    with Registry(registry_dsn) as registry:
        registry.ensure_customer("acme", actor="t")
        registry.provision_devices("acme", ["dev-1", "dev-2", "dev-3"], actor="t")
        registry.record_certificates(
            "acme",
            [
                Certificate(
                    11, "dev-1", "a" * 64, NOW - timedelta(days=1), NOW + timedelta(days=9)
                ),
                Certificate(
                    21, "dev-2", "b" * 64, NOW - timedelta(days=1), NOW + timedelta(days=9)
                ),
            ],
            actor="t",
        )
        yield registry


def test_a_revocation_is_read_as_a_change_of_its_device_alone(reg):
    snapshot, revoked = reg.gateway_view()
    assert set(snapshot.devices) == {"dev-1", "dev-2", "dev-3"} and revoked == set()
    assert reg.gateway_changes(snapshot.cursor).devices == {}  # nothing since

    reg.revoke_certificates("acme", [11], actor="t")
    changes = reg.gateway_changes(snapshot.cursor)
    assert changes.devices == {
        "dev-1": DeviceGrant("dev-1", "acme", IPv4Address("100.64.0.2"), "provisioned", frozenset())
    }
    assert changes.revoked == {11}
    # Read from the new cursor on, the same change is not read twice.
    assert reg.gateway_changes(changes.cursor).devices == {}


def test_a_removed_device_is_read_as_gone(reg):
    cursor = reg.change_cursor()
    reg.remove_devices("acme", ["dev-3"], actor="t")
    assert reg.gateway_changes(cursor).devices == {"dev-3": None}


def test_presence_is_not_published(reg):
    cursor = reg.change_cursor()
    reg.record_connect("dev-1", "gw-a", address="192.0.2.7")  # the first connect activates it
    assert reg.changes_since(cursor).keys == {"device": {"dev-1"}}
    cursor = reg.change_cursor()
    reg.record_disconnect("dev-1", "gw-a")
    reg.record_connect("dev-1", "gw-b", address="192.0.2.7")
    assert reg.changes_since(cursor).keys == {}


def test_tokens_and_customers_are_published_by_kind(reg):
    cursor = reg.change_cursor()
    _, issued = reg.ensure_token("billing", customer_id="acme", actor="t")
    reg.ensure_customer("globex", actor="t")
    changes = reg.changes_since(cursor)
    assert changes.of("token") == {issued.id}
    assert changes.of("customer") == {"globex"}
    assert changes.of("device", "certificate") == set()


def test_a_change_committed_late_with_an_earlier_sequence_is_not_missed(reg, registry_dsn):
    """The writer that drew the lower sequence number commits after a reader has already seen a
    higher one: a cursor of "the highest seq read" would skip it for ever."""
    cursor = reg.change_cursor()
    slow = psycopg.connect(registry_dsn)
    try:
        slow.execute("UPDATE devices SET state = 'revoked' WHERE id = 'dev-2'")  # open, first
        reg.revoke_devices("acme", ["dev-3"], actor="t")  # later, committed at once
        first = reg.gateway_changes(cursor)
        assert set(first.devices) == {"dev-3"}
        slow.commit()
    finally:
        slow.close()
    second = reg.gateway_changes(first.cursor)
    assert set(second.devices) == {"dev-2"} and second.devices["dev-2"].state == "revoked"


def test_a_reader_too_far_behind_or_with_a_strange_cursor_reads_everything(reg, registry_dsn):
    cursor = reg.change_cursor()
    reg.revoke_devices("acme", ["dev-1", "dev-2"], actor="t")
    assert reg.changes_since(cursor, limit=1) is None  # two changes, one allowed
    assert reg.changes_since("1:2:x") is None
    assert reg.changes_since("not a cursor") is None
    with psycopg.connect(registry_dsn) as conn:  # what the pruning does after a day
        conn.execute(
            "UPDATE registry_change_horizon"
            " SET pruned_through = (SELECT max(xid) FROM registry_changes)"
        )
    assert reg.changes_since(cursor) is None
    assert reg.changes_since(reg.change_cursor()) is not None  # a fresh cursor is fine


def test_old_changes_are_pruned_and_a_reader_that_missed_them_reads_everything(reg, registry_dsn):
    before = reg.change_cursor()
    reg.revoke_devices("acme", ["dev-2"], actor="t")  # not read from `before` yet
    after = reg.change_cursor()
    with psycopg.connect(registry_dsn) as conn:
        conn.execute("UPDATE registry_changes SET at = now() - interval '2 days'")
        # The 1000th change prunes what is older than a day.
        conn.execute("SELECT setval(pg_get_serial_sequence('registry_changes', 'seq'), 999)")
    reg.revoke_devices("acme", ["dev-1"], actor="t")
    with psycopg.connect(registry_dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FILTER (WHERE at < now() - interval '1 day'), count(*)"
            " FROM registry_changes"
        ).fetchone()
    assert left == (0, 2)  # dev-1 and its certificate, nothing older
    assert reg.changes_since(before) is None  # dev-2's revocation is gone unread
    assert reg.changes_since(after).of("device") == {"dev-1"}  # it had read what is gone


def test_a_notification_arrives_on_commit_and_not_before(reg, registry_dsn):
    listener = psycopg.connect(registry_dsn, autocommit=True)
    writer = psycopg.connect(registry_dsn)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        writer.execute("UPDATE certificates SET revoked_at = now(), revocation_reason ="
                       " 'key_compromise' WHERE serial = 11")  # fmt: skip
        assert _notifications(listener, 0.3) == []
        writer.commit()
        assert _notifications(listener, 5) == ["certificate"]
    finally:
        writer.close()
        listener.close()


def _notifications(conn: psycopg.Connection, wait_s: float) -> list[str]:
    """Payloads that arrive within wait_s (libpq level: what the gateway agent does)."""
    got: list[str] = []
    if select.select([conn.fileno()], [], [], wait_s)[0]:
        conn.pgconn.consume_input()
        while (n := conn.pgconn.notifies()) is not None:
            got.append(n.extra.decode())
    return got

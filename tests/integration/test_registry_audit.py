"""The audit log: monthly partitions with retention, filter columns, API requests recorded."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from iotistic_vpn.errors import InvalidValue
from iotistic_vpn.registry import Registry, RequestRecord
from tests.support.postgres import MIGRATION_DIR, MIGRATIONS

pytestmark = pytest.mark.postgres


@pytest.fixture
def reg(registry_dsn):
    with Registry(registry_dsn) as registry:
        yield registry


def _partitions(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def _request(device: str | None, status: int, at: datetime | None = None) -> RequestRecord:
    return RequestRecord(
        at=at or datetime.now(UTC), token_id="0123456789abcdef", token_name="dash",
        customer_id="acme", device_id=device, method="GET", path="/v1/device", status=status,
        bytes_in=0, bytes_out=120, duration_ms=3.2, source="198.51.100.7",
    )  # fmt: skip


def test_changes_carry_their_customer_and_device_and_filter_by_them(reg):
    reg.ensure_customer("acme", actor="ops")
    reg.ensure_customer("globex", actor="ops")
    reg.provision_devices("acme", ["pump-1"], actor="ops")
    reg.provision_devices("globex", ["mill-1"], actor="ops")
    acme = reg.audit_log(customer_id="acme")
    assert [(e.action, e.device_id) for e in acme] == [
        ("device.provision", "pump-1"), ("customer.create", None),
    ]  # fmt: skip
    assert [e.action for e in reg.audit_log(device_id="mill-1")] == ["device.provision"]
    with pytest.raises(InvalidValue, match="invalid device id"):
        reg.audit_log(device_id="../x")
    with pytest.raises(InvalidValue, match="audit limit"):
        reg.audit_log(limit=0)


def test_requests_are_recorded_in_bulk_and_followed_in_order(reg):
    first = reg.audit_log(limit=1)
    last_id = first[0].id if first else 0
    assert (
        reg.record_requests([_request("pump-1", 200), _request("pump-1", 503), _request(None, 401)])
        == 3
    )
    followed = reg.audit_log(after_id=last_id)
    assert [(e.action, e.device_id, e.detail["status"]) for e in followed] == [
        ("request", "pump-1", 200), ("request", "pump-1", 503), ("request", None, 401),
    ]  # fmt: skip
    assert followed[0].actor == "token:0123456789abcdef" and followed[0].detail["token"] == "dash"
    assert followed[0].target == "device:pump-1"
    assert "?" not in followed[0].detail["path"]
    assert [e.id for e in reg.audit_log(token_id="0123456789abcdef", action="request")] == [
        followed[2].id, followed[1].id, followed[0].id,
    ]  # fmt: skip
    assert reg.record_requests([]) == 0


def test_months_are_partitions_and_retention_drops_whole_old_months(reg, registry_dsn):
    now = datetime.now(UTC)
    this_month = f"audit_log_{now:%Y_%m}"
    assert this_month in _partitions(registry_dsn)
    made, dropped = reg.maintain_audit(retention_months=12)
    assert (
        made == [] and dropped == []
    )  # the migration made the coming months already and this_month in _partitions(registry_dsn)
    # An entry from long ago (imported, or a clock far off) lands in the default partition...
    old = now - timedelta(days=400)
    reg.record_requests([_request("pump-1", 200, at=old)])
    with psycopg.connect(registry_dsn) as conn:
        conn.execute("SELECT audit_log_month(%s::date)", (old.date() + timedelta(days=40),))
    before = _partitions(registry_dsn)
    assert "audit_log_default" in before
    _, dropped = reg.maintain_audit(retention_months=3)
    assert dropped and all(name < f"audit_log_{now:%Y_%m}" for name in dropped)
    assert this_month in _partitions(registry_dsn)
    # ...and is never dropped by retention, which works on whole month partitions only.
    assert any(e.at < now - timedelta(days=300) for e in reg.audit_log(device_id="pump-1"))
    with pytest.raises(InvalidValue, match="audit retention"):
        reg.maintain_audit(retention_months=0)


def test_the_migration_keeps_every_entry_written_before_it(pg_server):
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS audit_migrate")
        conn.execute("CREATE DATABASE audit_migrate")
    dsn = pg_server.dsn_for("audit_migrate")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn, Registry(conn) as reg:
            # The schema as it stood before 0003: the first two migrations, applied by migrate()
            # from a folder that holds only them.
            older = [m for m in MIGRATIONS if m < "0003"]
            folder = MIGRATION_DIR
            with conn.transaction():
                for name in older:
                    conn.execute((folder / f"{name}.sql").read_text())
            conn.execute(
                "INSERT INTO audit_log (actor, action, target) VALUES"
                " ('ops', 'customer.create', 'customer:acme'),"
                " ('ops', 'device.revoke', 'device:d1')"
            )
            # What migrate() records for them, so it applies only 0003 now.
            conn.execute(
                "CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for name in older:
                digest = hashlib.sha256((folder / f"{name}.sql").read_text().encode()).hexdigest()
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                    (int(name[:4]), name, digest),
                )
            assert reg.migrate() == [m for m in MIGRATIONS if m not in older]
            entries = reg.audit_log()
            assert [(e.action, e.customer_id, e.device_id) for e in entries] == [
                ("device.revoke", None, "d1"), ("customer.create", "acme", None),
            ]  # fmt: skip
            reg.record_requests([_request("d1", 200)])
            assert reg.audit_log(limit=1)[0].id > entries[0].id
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP DATABASE audit_migrate WITH (FORCE)")

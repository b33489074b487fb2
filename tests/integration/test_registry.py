"""The registry against a real PostgreSQL: schema, customers, devices, certificates, connections."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from iotistic_vpn.addressing import AddressSpaceExhausted
from iotistic_vpn.errors import InvalidValue, NotFound, RegistryUnavailable
from iotistic_vpn.registry import Certificate, Registry, RegistryConflict
from tests.support.postgres import MIGRATIONS

pytestmark = pytest.mark.postgres
NOW = datetime.now(UTC)


@pytest.fixture
def reg(registry_dsn):
    with Registry(registry_dsn) as registry:
        yield registry


def _cert(device_id: str, serial: int, *, days: int = 30) -> Certificate:
    return Certificate(
        serial=serial,
        device_id=device_id,
        fingerprint=f"{serial:064x}",
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=days),
    )


def _count(dsn: str, query: str, *params) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchone()[0]


# -- schema ----------------------------------------------------------------------------------


def test_migrations_are_recorded_and_idempotent(reg, registry_dsn):
    assert reg.migrate() == []  # the template already has them
    assert reg.schema_version() == int(MIGRATIONS[-1][:4])
    assert _count(registry_dsn, "SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)


def test_migrate_an_empty_database_then_again(pg_server):
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS fresh_migrate")
        conn.execute("CREATE DATABASE fresh_migrate")
    with Registry(pg_server.dsn_for("fresh_migrate")) as reg:
        assert reg.schema_version() == 0
        assert reg.migrate() == MIGRATIONS
        assert reg.migrate() == []
        assert reg.schema_version() == int(MIGRATIONS[-1][:4])
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE fresh_migrate WITH (FORCE)")


def test_unmigrated_database_says_what_to_do(pg_server):
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS unmigrated")
        conn.execute("CREATE DATABASE unmigrated")
    try:
        with (
            Registry(pg_server.dsn_for("unmigrated")) as reg,
            pytest.raises(
                RegistryUnavailable,
                match=re.escape(
                    '/unmigrated has no registry schema (relation "customers" does not exist):'
                    " apply the migrations first"
                ),
            ),
        ):
            reg.list_customers()
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP DATABASE unmigrated WITH (FORCE)")


def test_schema_refuses_overlapping_blocks_and_foreign_addresses(reg, registry_dsn):
    reg.ensure_customer("acme", actor="test")
    reg.provision_device("acme", "dev-1", actor="test")
    with psycopg.connect(registry_dsn) as conn:
        with pytest.raises(psycopg.errors.ExclusionViolation):
            conn.execute("INSERT INTO customers VALUES ('evil', 'x', '100.64.8.0/24')")
        conn.rollback()
        # The gateway address (first host) and addresses of another block are refused.
        for address in ("100.64.0.1", "100.64.16.5", "100.64.15.255"):
            with pytest.raises(psycopg.errors.CheckViolation, match="is not a device address"):
                conn.execute(
                    "INSERT INTO devices (id, customer_id, vpn_address) VALUES ('x', 'acme', %s)",
                    (address,),
                )
            conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO devices (id, customer_id, vpn_address) "
                "VALUES ('dev-2', 'acme', '100.64.0.2')"
            )


# -- customers -------------------------------------------------------------------------------


def test_customer_create_update_absent_is_idempotent(reg):
    first = reg.ensure_customer("acme", name="Acme", actor="alice")
    assert first.changed and first.items[0].block == "100.64.0.0/20"
    assert not reg.ensure_customer("acme", name="Acme", actor="alice").changed
    renamed = reg.ensure_customer("acme", name="Acme Corp", actor="alice")
    assert renamed.changed and renamed.items[0].name == "Acme Corp"
    assert reg.ensure_customer("globex", actor="alice").items[0].block == "100.64.16.0/20"
    assert reg.ensure_customer("acme", state="absent", actor="alice").changed
    assert not reg.ensure_customer("acme", state="absent", actor="alice").changed
    # The freed block is handed out again.
    assert reg.ensure_customer("initech", actor="alice").items[0].block == "100.64.0.0/20"
    actions = [(e.actor, e.action, e.target) for e in reg.audit_log(target="customer:acme")]
    assert actions == [
        ("alice", "customer.delete", "customer:acme"),
        ("alice", "customer.update", "customer:acme"),
        ("alice", "customer.create", "customer:acme"),
    ]


def test_pinned_block_is_checked(reg):
    reg.ensure_customer("acme", block="100.64.32.0/20", actor="t")
    with pytest.raises(InvalidValue, match=re.escape("invalid customer block '100.64.40.0/21'")):
        reg.ensure_customer("globex", block="100.64.40.0/21", actor="t")
    with pytest.raises(InvalidValue, match=re.escape("'10.0.0.0/20': is outside the pool")):
        reg.ensure_customer("globex", block="10.0.0.0/20", actor="t")
    with pytest.raises(
        InvalidValue, match=re.escape("customer 'acme' already owns 100.64.32.0/20")
    ):
        reg.ensure_customer("acme", block="100.64.48.0/20", actor="t")


def test_customer_with_devices_cannot_be_removed(reg):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["a1", "a2"], actor="t")
    with pytest.raises(
        InvalidValue, match=re.escape("invalid customer id 'acme': still has 2 device(s)")
    ):
        reg.ensure_customer("acme", state="absent", actor="t")


def test_full_pool_is_reported(registry_dsn):
    with Registry(registry_dsn, pool="100.64.0.0/22", block_prefix=24) as reg:
        blocks = [reg.ensure_customer(f"c{i}", actor="t").items[0].block for i in range(3)]
        assert blocks == ["100.64.0.0/24", "100.64.1.0/24", "100.64.2.0/24"]
        # 100.64.3.0/24, the top of the pool, carries the gateways' tunnel addresses.
        with pytest.raises(
            AddressSpaceExhausted, match=re.escape("address pool 100.64.0.0/22 is full")
        ):
            reg.ensure_customer("c4", actor="t")
        with pytest.raises(
            InvalidValue, match=re.escape("overlaps 100.64.3.0/24, the gateways' tunnel")
        ):
            reg.ensure_customer("c4", block="100.64.3.0/25", actor="t")
        assert [c.id for c in reg.list_customers()] == ["c0", "c1", "c2"]


# -- devices ---------------------------------------------------------------------------------


def test_provision_is_stable_and_idempotent(reg):
    reg.ensure_customer("acme", actor="t")
    first = reg.provision_devices("acme", ["dev-1", "dev-2"], actor="t")
    assert [(d.id, d.vpn_address, d.state) for d in first.items] == [
        ("dev-1", "100.64.0.2", "provisioned"),
        ("dev-2", "100.64.0.3", "provisioned"),
    ]
    again = reg.provision_devices("acme", ["dev-2", "dev-3", "dev-1"], actor="t")
    assert [(d.id, d.vpn_address) for d in again.items] == [
        ("dev-2", "100.64.0.3"),
        ("dev-3", "100.64.0.4"),
        ("dev-1", "100.64.0.2"),
    ]
    assert [c.target for c in again.changes] == ["device:dev-3"]


def test_batch_of_thousands_in_one_call(reg, registry_dsn):
    reg.ensure_customer("acme", actor="t")
    ids = [f"dev-{i:05d}" for i in range(4000)]
    result = reg.provision_devices("acme", ids, actor="batch")
    addresses = {d.vpn_address for d in result.items}
    assert len(addresses) == 4000 and len(result.changes) == 4000
    assert _count(registry_dsn, "SELECT count(*) FROM audit_log WHERE actor = 'batch'") == 4000
    with pytest.raises(
        AddressSpaceExhausted, match=re.escape("customer block 100.64.0.0/20 is full")
    ):
        reg.provision_devices("acme", [f"more-{i}" for i in range(94)], actor="t")
    assert _count(registry_dsn, "SELECT count(*) FROM devices") == 4000


def test_lookups(reg):
    reg.ensure_customer("acme", actor="t")
    reg.ensure_customer("globex", actor="t")
    reg.provision_devices("acme", ["a1", "a2"], actor="t")
    reg.provision_devices("globex", ["g1"], actor="t")
    reg.record_connect("a2", "gw-1")
    assert reg.get_device("acme", "a1").vpn_address == "100.64.0.2"
    assert reg.find_device("g1").customer_id == "globex"
    assert reg.device_by_address("100.64.16.2").id == "g1"
    assert [d.id for d in reg.list_devices(customer_id="acme")] == ["a1", "a2"]
    assert [d.id for d in reg.list_devices(state="provisioned")] == ["a1", "g1"]
    assert [d.id for d in reg.list_devices(gateway="gw-1", connected=True)] == ["a2"]
    with pytest.raises(NotFound, match=re.escape("no device holds VPN address 100.64.0.9")):
        reg.device_by_address("100.64.0.9")
    with pytest.raises(InvalidValue, match=re.escape("invalid device state 'gone'")):
        reg.list_devices(state="gone")


def test_nothing_crosses_customers(reg):
    reg.ensure_customer("acme", actor="t")
    reg.ensure_customer("globex", actor="t")
    reg.provision_devices("globex", ["g1"], actor="t")
    reg.record_certificate("globex", _cert("g1", 7), actor="t")
    with pytest.raises(NotFound, match=re.escape("device 'g1' of customer 'acme' not found")):
        reg.get_device("acme", "g1")
    with pytest.raises(NotFound, match=re.escape("device 'g1' of customer 'acme' not found")):
        reg.revoke_device("acme", "g1", actor="t")
    with pytest.raises(NotFound, match=re.escape("device 'g1' of customer 'acme' not found")):
        reg.certificates("acme", "g1")
    with pytest.raises(NotFound, match=re.escape("certificate 7 of customer 'acme' not found")):
        reg.revoke_certificates("acme", [7], actor="t")
    with pytest.raises(NotFound, match=re.escape("device 'g1' of customer 'acme' not found")):
        reg.record_certificate("acme", _cert("g1", 8), actor="t")
    # Removing another customer's device is a no-op, and it cannot be claimed.
    assert not reg.remove_devices("acme", ["g1"], actor="t").changed
    with pytest.raises(
        InvalidValue, match=re.escape("invalid device id 'g1': is already registered to another")
    ):
        reg.provision_devices("acme", ["g1"], actor="t")
    assert reg.get_device("globex", "g1").state == "provisioned"
    assert reg.list_devices(customer_id="acme") == []


def test_revoke_device_revokes_its_certificates_once(reg):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["dev-1"], actor="t")
    reg.record_certificates("acme", [_cert("dev-1", 1), _cert("dev-1", 2)], actor="t")
    result = reg.revoke_devices("acme", ["dev-1"], actor="bob", reason="key_compromise")
    assert result.changed and result.items[0].state == "revoked"
    certs = reg.certificates("acme", "dev-1")
    assert {(c.serial, c.revocation_reason) for c in certs} == {
        (1, "key_compromise"),
        (2, "key_compromise"),
    }
    assert all(c.revoked_at is not None for c in certs)
    assert not reg.revoke_devices("acme", ["dev-1"], actor="bob").changed
    assert {c.serial for c in reg.revoked_certificates()} == {1, 2}
    entry = reg.audit_log(target="device:dev-1", limit=1)[0]
    assert (entry.actor, entry.action, entry.detail) == (
        "bob",
        "device.revoke",
        {"reason": "key_compromise", "serials": ["1", "2"]},
    )
    with pytest.raises(InvalidValue, match="'dev-1': is revoked; a revoked device id is never"):
        reg.provision_devices("acme", ["dev-1"], actor="t")
    with pytest.raises(RegistryConflict, match="device dev-1 is revoked: certificate 3 cannot"):
        reg.record_certificate("acme", _cert("dev-1", 3), actor="t")
    with pytest.raises(InvalidValue, match=re.escape("invalid revocation reason 'oops'")):
        reg.revoke_devices("acme", ["dev-1"], actor="t", reason="oops")


def test_remove_device_needs_revocation_first(reg):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["dev-1", "dev-2"], actor="t")
    reg.record_certificate("acme", _cert("dev-1", 11), actor="t")
    with pytest.raises(
        InvalidValue,
        match=re.escape("'dev-1': still holds valid certificate(s) 11: revoke the device first"),
    ):
        reg.remove_devices("acme", ["dev-1", "dev-2"], actor="t")
    assert len(reg.list_devices(customer_id="acme")) == 2  # nothing half-done
    reg.revoke_device("acme", "dev-1", actor="t")
    # Revoked but not expired: the row keeps serial 11 on the revocation list.
    with pytest.raises(InvalidValue, match=r"'dev-1': its revoked certificate\(s\) 11 have not"):
        reg.remove_devices("acme", ["dev-1"], actor="t")
    assert 11 in reg.revoked_serials()
    assert len(reg.remove_devices("acme", ["dev-2"], actor="t").changes) == 1


def test_a_revoked_device_is_removed_once_its_certificates_expired(reg):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["dev-1"], actor="t")
    reg.record_certificate("acme", _cert("dev-1", 11, days=0), actor="t")
    reg.revoke_device("acme", "dev-1", actor="t")
    assert len(reg.remove_devices("acme", ["dev-1"], actor="t").changes) == 1
    assert reg.list_devices() == []


# -- certificates ----------------------------------------------------------------------------


def test_certificates_big_serials_rotation_and_idempotence(reg):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["dev-1"], actor="t")
    big = (1 << 158) + 12345  # a 20-octet serial (RFC 5280 caps it at 159 bits), beyond bigint
    assert reg.record_certificate("acme", _cert("dev-1", big), actor="t").serial == big
    assert not reg.record_certificates("acme", [_cert("dev-1", big)], actor="t").changed
    reg.record_certificate("acme", _cert("dev-1", 2), actor="t")  # rotation: two valid
    with pytest.raises(RegistryConflict, match="device dev-1 already has 2 valid certificates"):
        reg.record_certificate("acme", _cert("dev-1", 3), actor="t")
    reg.revoke_certificates("acme", [big], actor="t")
    reg.record_certificate("acme", _cert("dev-1", 3), actor="t")
    serials = [(c.serial, c.revocation_reason) for c in reg.certificates("acme", "dev-1")]
    assert sorted(serials) == [(2, None), (3, None), (big, "superseded")]
    assert reg.current_serials() == {"dev-1": frozenset({2, 3})}
    assert reg.current_serials(["other"]) == {}
    clash = Certificate(2, "dev-1", "ab" * 32, NOW, NOW + timedelta(days=1))
    with pytest.raises(InvalidValue, match="invalid certificate serial 2: is already recorded"):
        reg.record_certificate("acme", clash, actor="t")


def test_certificate_fingerprint_is_normalised_and_checked(reg):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["dev-1"], actor="t")
    colons = ":".join(["AB"] * 32)
    cert = Certificate(5, "dev-1", colons, NOW, NOW + timedelta(days=1))
    assert reg.record_certificate("acme", cert, actor="t").fingerprint == "ab" * 32
    bad = Certificate(6, "dev-1", "xyz", NOW, NOW + timedelta(days=1))
    with pytest.raises(InvalidValue, match=re.escape("invalid certificate fingerprint 'xyz'")):
        reg.record_certificate("acme", bad, actor="t")


def test_enrollment_finds_the_newest_certificate_not_revoked_with_its_pem(reg, registry_dsn):
    reg.ensure_customer("acme", actor="t")
    reg.ensure_customer("globex", actor="t")
    reg.provision_devices("acme", ["dev-1"], actor="t")
    assert reg.enrollment_target("acme", "dev-2").device is None
    assert reg.enrollment_target("acme", "dev-1").certificate is None
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    reg.record_certificate("acme", _cert("dev-1", 7), actor="t")  # as Ansible records: no PEM
    found = reg.enrollment_target("acme", "dev-1")
    assert (found.device.id, found.certificate.serial, found.pem) == ("dev-1", 7, None)
    newer = replace(_cert("dev-1", 8), not_before=NOW)
    assert reg.record_certificates("acme", [newer], actor="t", pems={8: pem}).changed
    assert (reg.enrollment_target("acme", "dev-1").certificate.serial,
            reg.enrollment_target("acme", "dev-1").pem) == (8, pem)  # fmt: skip
    assert _count(registry_dsn, "SELECT count(*) FROM certificates WHERE pem = %s", pem) == 1
    reg.revoke_certificates("acme", [8], actor="t")
    assert reg.enrollment_target("acme", "dev-1").certificate.serial == 7
    # Another customer's device is found (to be refused), its certificate is not handed over.
    other = reg.enrollment_target("globex", "dev-1")
    assert (other.device.customer_id, other.certificate, other.pem) == ("acme", None, None)
    with pytest.raises(NotFound, match="customer 'initech' not found"):
        reg.enrollment_target("initech", "dev-1")


@pytest.mark.parametrize(
    ("pems", "message"),
    [
        ({9: "-----BEGIN CERTIFICATE-----\n"}, "invalid certificate PEM 9: is for no certificate"),
        ({3: "MIIB"}, "invalid certificate PEM 3: not a PEM certificate"),
    ],
)
def test_a_pem_names_its_serial_when_refused(reg, registry_dsn, pems, message):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["dev-1"], actor="t")
    with pytest.raises(InvalidValue, match=re.escape(message)):
        reg.record_certificates("acme", [_cert("dev-1", 3)], actor="t", pems=pems)
    assert _count(registry_dsn, "SELECT count(*) FROM certificates") == 0


# -- connections -----------------------------------------------------------------------------


def test_connect_and_disconnect_follow_the_owning_gateway(reg, registry_dsn):
    reg.ensure_customer("acme", actor="t")
    reg.provision_devices("acme", ["dev-1"], actor="t")
    device = reg.record_connect("dev-1", "gw-a", address="198.51.100.7:40000")
    assert (device.state, device.connected, device.gateway) == ("active", True, "gw-a")
    # The device moved to gw-b before gw-a noticed it left: gw-a's late disconnect is ignored.
    reg.record_connect("dev-1", "gw-b")
    assert reg.record_disconnect("dev-1", "gw-a") is False
    assert reg.get_device("acme", "dev-1").connected is True
    assert reg.record_disconnect("dev-1", "gw-b") is True
    device = reg.get_device("acme", "dev-1")
    assert (device.connected, device.gateway, device.state) == (False, "gw-b", "active")
    assert device.last_seen is not None
    events = _count(registry_dsn, "SELECT count(*) FROM connection_events WHERE device_id = %s",
                    "dev-1")  # fmt: skip
    assert events == 4
    reg.record_connect("dev-1", "gw-b")
    assert reg.disconnect_gateway("gw-b") == 1
    reg.revoke_device("acme", "dev-1", actor="t")
    with pytest.raises(InvalidValue, match="'dev-1': is revoked: connection refused"):
        reg.record_connect("dev-1", "gw-b")


# -- transactions and errors -----------------------------------------------------------------


def test_dry_run_does_the_work_then_rolls_back(reg, registry_dsn):
    reg.ensure_customer("acme", actor="t")
    with reg.transaction(dry_run=True):
        reg.ensure_customer("globex", actor="t")
        result = reg.provision_devices("globex", ["g1", "g2"], actor="t")
        assert [d.vpn_address for d in result.items] == ["100.64.16.2", "100.64.16.3"]
    assert [c.id for c in reg.list_customers()] == ["acme"]
    assert _count(registry_dsn, "SELECT count(*) FROM devices") == 0
    assert _count(registry_dsn, "SELECT count(*) FROM audit_log") == 1


def test_outer_transaction_is_all_or_nothing(reg):
    reg.ensure_customer("acme", actor="t")
    with pytest.raises(InvalidValue), reg.transaction():
        reg.provision_devices("acme", ["dev-1"], actor="t")
        reg.provision_devices("acme", ["Bad_Id"], actor="t")
    assert reg.list_devices() == []


def test_bad_input_names_the_value(reg):
    with pytest.raises(InvalidValue, match=re.escape("invalid customer id 'ACME'")):
        reg.ensure_customer("ACME", actor="t")
    reg.ensure_customer("acme", actor="t")
    with pytest.raises(InvalidValue, match=re.escape("invalid device id 'dev_1'")):
        reg.provision_devices("acme", ["ok-1", "dev_1"], actor="t")
    with pytest.raises(InvalidValue, match=re.escape("invalid actor ''")):
        reg.provision_devices("acme", ["ok-1"], actor="")
    with pytest.raises(NotFound, match=re.escape("customer 'nobody' not found")):
        reg.provision_devices("nobody", ["ok-1"], actor="t")
    assert reg.list_devices() == []


def test_unreachable_database_is_reported_without_the_password(pg_server):
    dsn = (
        f"host=127.0.0.1 port={pg_server.port} user=postgres password=s3cret-pw "
        "dbname=nowhere connect_timeout=2"
    )
    with Registry(dsn) as reg, pytest.raises(RegistryUnavailable) as info:
        reg.list_customers()
    message = str(info.value)
    assert message.startswith(
        f"registry database postgres@127.0.0.1:{pg_server.port}/nowhere is unavailable: "
    )
    assert "password authentication failed" in message
    assert "s3cret-pw" not in message


def test_malformed_dsn_hides_it(pg_server):
    with pytest.raises(InvalidValue, match=re.escape("invalid registry DSN '<hidden>'")):
        Registry("host=x password=hunter2 port")

"""Least privilege in the registry (migration 0007), with real logins on the real server.

Each test logs in as a member of one group role, the way a gateway, the API or an operator
does, and asserts both what that part's own code does and what a compromised one cannot.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from iotistic_vpn import conventions
from iotistic_vpn.registry import (
    Certificate,
    ConnectionEvent,
    Registry,
    RegistryConflict,
    RequestRecord,
)
from tests.support.postgres import MIGRATION_DIR, MIGRATIONS

pytestmark = pytest.mark.postgres

NOW = datetime.now(UTC)


@pytest.fixture
def login(pg_server, registry_dsn) -> Iterator[Callable[[str], str]]:
    """login(group) -> the DSN of a new login of that group role on this test's database."""
    made: list[str] = []
    dbname = conninfo_to_dict(registry_dsn)["dbname"]

    def make(group: str) -> str:
        name, password = f"t-{group}-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
        with pg_server.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(name), sql.Literal(password), sql.Identifier(group)
                )
            )
        made.append(name)
        return make_conninfo(
            host=pg_server.host, port=pg_server.port, dbname=dbname, user=name, password=password
        )

    yield make
    with pg_server.connect() as conn:
        for name in made:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def fleet(registry_dsn):
    """acme with a live device (one certificate), a revoked one, a token and an agent key."""
    with Registry(registry_dsn) as reg:
        reg.ensure_customer("acme", actor="t")
        reg.provision_devices("acme", ["pump-1", "pump-2"], actor="t")
        for serial, device in ((101, "pump-1"), (102, "pump-2")):
            fingerprint = hashlib.sha256(str(serial).encode()).hexdigest()
            cert = Certificate(
                serial, device, fingerprint, NOW - timedelta(days=1), NOW + timedelta(days=30)
            )
            reg.record_certificate("acme", cert, actor="t")
        reg.revoke_device("acme", "pump-2", actor="t", reason="key_compromise")
        reg.set_agent_key("acme", "pump-1", "agent-key-0123456789", actor="t")
        _, issued = reg.ensure_token("acme-ro", customer_id="acme", actor="t")
    return issued


def _raw(dsn: str, query: str, params: tuple = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, params)


# -- gateways ------------------------------------------------------------------------------


def test_a_gateway_runs_its_snapshot_and_records_its_events(login, fleet, registry_dsn):
    with Registry(login(conventions.REGISTRY_GATEWAY_ROLE)) as gw:
        snapshot = gw.gateway_snapshot()
        assert snapshot.devices["pump-1"].serials == frozenset({101})
        assert snapshot.devices["pump-2"].state == "revoked"
        assert gw.revoked_serials() == {102}
        events = [
            ConnectionEvent("pump-1", "gw-1", "connect", NOW, "192.0.2.7:5000"),
            ConnectionEvent("pump-2", "gw-1", "connect", NOW, "192.0.2.8:5000"),
        ]
        assert gw.record_connection_events(events) == ["applied", "refused"]
        assert [d.id for d in gw.list_devices(gateway="gw-1", connected=True)] == ["pump-1"]
        assert gw.disconnect_gateway("gw-1") == 1
    with Registry(registry_dsn) as reg:
        device = reg.get_device("acme", "pump-1")
    # The first connect activated the device: the database's rule, not the gateway's write.
    assert (device.state, device.connected, device.gateway) == ("active", False, "gw-1")


def test_a_gateway_follows_the_change_feed(login, fleet, registry_dsn):
    with Registry(login(conventions.REGISTRY_GATEWAY_ROLE)) as gw:
        view, revoked = gw.gateway_view()
        assert (set(view.devices), revoked) == ({"pump-1", "pump-2"}, {102})
        cursor = gw.change_cursor()
        with Registry(registry_dsn) as reg:
            reg.revoke_device("acme", "pump-1", actor="t")
        changes = gw.gateway_changes(cursor)
    assert changes is not None and changes.revoked == {101}
    assert changes.devices["pump-1"].state == "revoked"


@pytest.mark.parametrize(
    "query",
    [
        "UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL WHERE serial = 102",
        "UPDATE devices SET state = 'active' WHERE id = 'pump-2'",
        "DELETE FROM certificates WHERE serial = 102",
        "INSERT INTO certificates (serial, device_id, fingerprint, not_before, not_after)"
        " VALUES (7, 'pump-2', repeat('a', 64), now(), now() + interval '1 day')",
        "UPDATE customers SET name = 'x'",
        "SELECT * FROM api_tokens",
        "SELECT * FROM device_agent_keys",
        "SELECT * FROM customers",
        "SELECT * FROM audit_log",
        "SELECT pem FROM certificates",  # 0009: the columns it had, nothing new
        "INSERT INTO audit_log (actor, action, target) VALUES ('gw', 'x', 'y')",
        "DELETE FROM connection_events",
        "CREATE TABLE gw_own (x int)",
        "SELECT audit_log_drop_before(now()::date)",
        "SELECT registry_prune_changes()",
        "INSERT INTO registry_changes (kind, key) VALUES ('device', 'pump-2')",
        "DELETE FROM registry_changes",
    ],
)
def test_a_gateway_changes_no_certificate_state_or_customer_and_reads_no_secret(
    login, fleet, registry_dsn, query
):
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        _raw(login(conventions.REGISTRY_GATEWAY_ROLE), query)
    with Registry(registry_dsn) as reg:
        assert reg.revoked_serials() == {102}
        assert reg.get_device("acme", "pump-2").state == "revoked"


def test_a_gateway_cannot_mark_a_revoked_device_connected(login, fleet):
    with pytest.raises(errors.CheckViolation, match="device pump-2 is revoked: it cannot be"):
        _raw(
            login(conventions.REGISTRY_GATEWAY_ROLE),
            "UPDATE devices SET connected = true, gateway = 'gw-evil' WHERE id = 'pump-2'",
        )


# -- the API -------------------------------------------------------------------------------


def test_the_api_login_does_what_the_api_does(login, fleet):
    with Registry(login(conventions.REGISTRY_API_ROLE)) as api:
        token = api.authenticate(fleet.value)
        assert token is not None and token.customer_id == "acme"
        assert api.find_device("pump-1").customer_id == "acme"
        assert api.agent_key("pump-1") == "agent-key-0123456789"
        statuses = api.device_statuses(customer_id="acme", device_ids=["pump-1"])
        assert [s.device.id for s in statuses] == ["pump-1"]
        assert api.schema_version() == int(MIGRATIONS[-1][:4])
        cursor = api.change_cursor()  # the caches follow the change feed (api/follow.py)
        record = RequestRecord(
            at=NOW, token_id=token.id, token_name=token.name, customer_id="acme",
            device_id="pump-1", method="GET", path="/v1/device", status=200, bytes_in=0,
            bytes_out=10, duration_ms=1.0, source="198.51.100.7",
        )  # fmt: skip
        assert api.record_requests([record]) == 1
        made, issued = api.ensure_token("acme-rw", customer_id="acme", actor="token:op")
        assert made.changed and issued is not None
        assert api.revoke_token(issued.id, actor="token:op").changed
        assert "acme-rw" in {t.name for t in api.list_tokens("acme", include_revoked=True)}
        assert api.audit_log(limit=1)[0].action == "token.revoke"
        assert api.changes_since(cursor).of("token") == {issued.id}
        api.maintain_audit(retention_months=13)


def test_the_api_login_enrolls_a_device_with_a_provisioning_token(login, fleet, tmp_path):
    """What POST /v1/enroll runs (migrations 0008, 0009): the token's use, the device and its
    certificate with the PEM in one transaction, then again from that PEM, as the API's login."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    from iotistic_vpn import enrollment, pki
    from iotistic_vpn.pki import tlscrypt

    pki.ensure_ca(pki.CaFiles.at(tmp_path / "ca"))
    (tmp_path / "tc.key").write_bytes(tlscrypt.generate_server_key())
    ca = enrollment.EnrollmentPki.load(tmp_path / "ca", tmp_path / "tc.key", "vpn.example.net")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    request = enrollment.EnrollmentRequest("pump-3", None, csr.public_bytes(Encoding.PEM).decode())
    with Registry(login(conventions.REGISTRY_API_ROLE)) as api:
        _, issued = api.ensure_provisioning_token(
            "acme", "factory", actor="token:op", expires_at=NOW + timedelta(days=1)
        )
        done = enrollment.handle(api, ca, issued.value, request, "198.51.100.7")
        assert (done.created, done.status) == (True, "issued")
        assert api.enrollment_target("acme", "pump-3").pem == done.certificate
        again = enrollment.handle(api, ca, issued.value, request, "198.51.100.7")
        assert (again.created, again.status, again.certificate) == (
            False, "unchanged", done.certificate,
        )  # fmt: skip
        assert api.find_device("pump-3").customer_id == "acme"
        assert api.revoke_provisioning_token(issued.id, actor="token:op").changed
        assert [t.uses for t in api.list_provisioning_tokens("acme", include_revoked=True)] == [1]


@pytest.mark.parametrize(
    "query",
    [
        "UPDATE devices SET state = 'active' WHERE id = 'pump-2'",
        "UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL",
        "UPDATE certificates SET pem = NULL",
        "UPDATE api_tokens SET secret_hash = sha256('x'), expires_at = NULL",
        "DELETE FROM audit_log",
        "UPDATE device_agent_keys SET agent_key = repeat('k', 20)",
        "DROP TABLE audit_log_default",
        "UPDATE provisioning_tokens SET max_uses = 100, expires_at = now() + interval '1 y'",
        "UPDATE devices SET customer_id = 'acme', vpn_address = vpn_address",
        "DELETE FROM provisioning_tokens",
    ],
)
def test_the_api_login_writes_nothing_else(login, fleet, query):
    with pytest.raises(errors.InsufficientPrivilege):
        _raw(login(conventions.REGISTRY_API_ROLE), query)


# -- operators and the owner ---------------------------------------------------------------


def test_an_operator_provisions_and_revokes_but_changes_no_schema(login, fleet):
    dsn = login(conventions.REGISTRY_OPERATOR_ROLE)
    with Registry(dsn) as ops:
        ops.ensure_customer("globex", actor="ops")
        assert ops.provision_devices("globex", ["meter-1"], actor="ops").changed
        assert ops.revoke_device("globex", "meter-1", actor="ops").state == "revoked"
        assert ops.revoke_device("acme", "pump-1", actor="ops").state == "revoked"
    for query in ("ALTER TABLE devices ADD COLUMN x int", "DROP TABLE audit_log_default"):
        with pytest.raises(errors.InsufficientPrivilege, match="must be owner"):
            _raw(dsn, query)


# -- customer blocks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("10.0.0.0/20", "block 10.0.0.0/20 of customer rogue is outside the address pool 100.64"),
        ("100.127.255.0/25", "block 100.127.255.0/25 of customer rogue overlaps 100.127.255.0/24"),
        ("100.127.240.0/20", "block 100.127.240.0/20 of customer rogue overlaps 100.127.255.0/24"),
    ],
)
def test_the_database_keeps_blocks_in_the_pool_and_off_the_gateways(
    login, registry_dsn, block, message
):
    # Raw SQL, as an operator: the rule holds for a writer that bypasses the Python registry.
    with pytest.raises(errors.CheckViolation, match=re.escape(message)):
        _raw(
            login(conventions.REGISTRY_OPERATOR_ROLE),
            "INSERT INTO customers (id, name, block) VALUES ('rogue', 'Rogue', %s)",
            (block,),
        )


def test_a_pool_that_leaves_a_block_outside_is_refused(registry_dsn):
    with Registry(registry_dsn) as reg:
        reg.ensure_customer("acme", block="100.64.16.0/20", actor="t")
    with (
        Registry(registry_dsn, pool="100.64.0.0/20", block_prefix=24) as reg,
        pytest.raises(RegistryConflict, match=re.escape("would leave block 100.64.16.0/20 of")),
    ):
        reg.migrate()
    with Registry(registry_dsn, pool="100.64.0.0/16") as reg:
        reg.migrate()  # a pool that still holds every block is taken
    with psycopg.connect(registry_dsn) as conn:
        row = conn.execute("SELECT pool::text, gateway_network::text FROM registry_settings")
        assert row.fetchone() == ("100.64.0.0/16", "100.64.255.0/24")


def test_the_migration_refuses_a_registry_whose_blocks_break_the_rule(pg_server):
    name = f"m_{uuid.uuid4().hex[:12]}"
    with pg_server.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_server.dsn_for(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            older = [m for m in MIGRATIONS if m < "0007"]
            with conn.transaction():
                conn.execute(
                    "CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
                    " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                for migration in older:
                    text = (MIGRATION_DIR / f"{migration}.sql").read_text()
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                        (int(migration[:4]), migration, hashlib.sha256(text.encode()).hexdigest()),
                    )
            # Written before the pool was the database's to check: a block on the gateways' /24.
            conn.execute(
                "INSERT INTO customers (id, name, block)"
                " VALUES ('edge', 'Edge', '100.127.255.0/29')"
            )
        with (
            Registry(dsn) as reg,
            pytest.raises(
                RegistryConflict,
                match=re.escape(
                    "migration 0007 refused: customer edge holds block 100.127.255.0/29"
                ),
            ),
        ):
            reg.migrate()
        with Registry(dsn) as reg:
            assert reg.schema_version() == int(older[-1][:4])  # nothing of 0007 was kept
    finally:
        with pg_server.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

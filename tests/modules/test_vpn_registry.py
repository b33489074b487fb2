"""vpn_registry through the real ansible-playbook against the throwaway PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.ansible_run import REPO, run_playbook
from tests.support.postgres import MIGRATIONS

pytestmark = [pytest.mark.ansible, pytest.mark.postgres]
MODULE = REPO / "python_plugins" / "modules" / "vpn_registry.py"


def _task(name: str, **args) -> dict:
    return {"name": name, "vpn_registry": {"dsn": "{{ registry_dsn }}", **args}}


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def test_check_mode_previews_and_writes_nothing(registry_dsn, tmp_path):
    run = run_playbook(
        [_task("Preview acme.", customer="acme", devices=["pump-1", "pump-2"], actor="ci")],
        tmp_path,
        check=True,
        diff=True,
        extra_vars={"registry_dsn": registry_dsn},
    )
    assert run.returncode == 0, run.stdout
    result = run.tasks["Preview acme."]
    assert result["changed"] is True
    assert [(d["id"], d["vpn_address"]) for d in result["devices"]] == [
        ("pump-1", "100.64.0.2"),
        ("pump-2", "100.64.0.3"),
    ]
    assert result["diff"] == {
        "before": {"customer": None, "devices": {}},
        "after": {
            "customer": {"name": "acme", "block": "100.64.0.0/20"},
            "devices": {
                "pump-1": {"state": "provisioned", "vpn_address": "100.64.0.2"},
                "pump-2": {"state": "provisioned", "vpn_address": "100.64.0.3"},
            },
        },
    }
    counts = (
        "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM devices),"
        " (SELECT count(*) FROM audit_log)"
    )
    assert _rows(registry_dsn, counts) == [(0, 0, 0)]


def test_lifecycle_is_idempotent(registry_dsn, pg_server, tmp_path):
    login = {
        "login_host": pg_server.host,
        "login_port": pg_server.port,
        "login_user": pg_server.user,
        "login_password": pg_server.password,
        "db": registry_dsn.split("dbname=")[1].split()[0],
    }
    devices = ["pump-1", "pump-2", "pump-3"]
    tasks = [
        _task("Create.", customer="acme", customer_name="Acme", devices=devices, actor="ci"),
        {"name": "Again (login options).",
         "vpn_registry": {"customer": "acme", "customer_name": "Acme", "devices": devices,
                          **login}},
        _task("Revoke preview.", customer="acme", devices=["pump-2"], state="revoked",
              revocation_reason="key_compromise", check_mode=True),
        _task("Revoke.", customer="acme", devices=["pump-2"], state="revoked",
              revocation_reason="key_compromise"),
        _task("Revoke again.", customer="acme", devices=["pump-2"], state="revoked"),
        _task("Remove.", customer="acme", devices=["pump-2", "pump-3"], state="absent"),
        _task("Remove again.", customer="acme", devices=["pump-2", "pump-3"], state="absent"),
    ]  # fmt: skip
    # check_mode belongs to the task, not to the module's arguments.
    tasks[2]["check_mode"] = tasks[2]["vpn_registry"].pop("check_mode")
    run = run_playbook(tasks, tmp_path, diff=True, extra_vars={"registry_dsn": registry_dsn})
    assert run.returncode == 0, run.stdout
    changed = {name: result["changed"] for name, result in run.tasks.items()}
    assert changed == {
        "Create.": True,
        "Again (login options).": False,
        "Revoke preview.": True,
        "Revoke.": True,
        "Revoke again.": False,
        "Remove.": True,
        "Remove again.": False,
    }
    assert run.tasks["Create."]["actions"][0] == {
        "action": "customer.create",
        "target": "customer:acme",
    }
    assert run.tasks["Revoke."]["diff"]["before"]["devices"] == {
        "pump-2": {"state": "provisioned", "vpn_address": "100.64.0.3"}
    }
    assert run.tasks["Revoke."]["devices"][0]["state"] == "revoked"
    assert pg_server.password not in run.stdout + run.stderr
    assert _rows(registry_dsn, "SELECT id, state, host(vpn_address) FROM devices") == [
        ("pump-1", "provisioned", "100.64.0.2")
    ]
    assert _rows(registry_dsn, "SELECT DISTINCT actor FROM audit_log ORDER BY 1") == [
        ("ansible",),
        ("ci",),
    ]


def test_errors_name_the_value_and_change_nothing(registry_dsn, pg_server, tmp_path):
    down = f"host=127.0.0.1 port={pg_server.port + 1} user=postgres password=pw dbname=x"
    tasks = [
        _task("Bad device id.", customer="acme", devices=["pump-1", "Pump_2"]),
        _task("Bad customer id.", customer="-acme"),
        _task("Pool too small.", customer="acme", block_prefix=8),
        {"name": "Database down.",
         "vpn_registry": {"customer": "acme", "dsn": down, "connect_timeout": 2}},
        _task("Revoke unknown.", customer="acme", devices=["ghost"], state="revoked"),
        _task("Revoke without devices.", customer="acme", state="revoked"),
        _task("DSN and login options.", customer="acme", login_host="db.example"),
    ]  # fmt: skip
    for task in tasks:
        task["ignore_errors"] = True
    run = run_playbook(tasks, tmp_path, extra_vars={"registry_dsn": registry_dsn})
    msgs = {name: result.get("msg") for name, result in run.tasks.items()}
    assert msgs["Bad device id."] == (
        "invalid device id 'Pump_2': use 1-63 lower-case letters, digits and inner hyphens "
        "(a DNS label)"
    )
    assert msgs["Bad customer id."].startswith("invalid customer id '-acme'")
    assert msgs["Pool too small."].startswith("invalid block prefix 8: must be between /10")
    assert msgs["Database down."].startswith(
        f"registry database postgres@127.0.0.1:{pg_server.port + 1}/x is unavailable: "
    )
    assert "Connection refused" in msgs["Database down."]
    assert msgs["Revoke unknown."] == "device 'ghost' of customer 'acme' not found"
    assert (
        msgs["Revoke without devices."]
        == "state is revoked but all of the following are missing: devices"
    )
    assert msgs["DSN and login options."] == "parameters are mutually exclusive: dsn|login_host"
    assert all(run.tasks[name]["failed"] for name in msgs)
    assert _rows(registry_dsn, "SELECT count(*) FROM customers") == [(0,)]


def test_migrate_an_empty_database(pg_server, tmp_path):
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS module_migrate")
        conn.execute("CREATE DATABASE module_migrate")
    dsn = pg_server.dsn_for("module_migrate")
    try:
        tasks = [
            _task("Migrate and create.", customer="acme", devices=["pump-1"], migrate=True),
            _task("Migrate again.", customer="acme", migrate=True),
        ]
        run = run_playbook(tasks, tmp_path, extra_vars={"registry_dsn": dsn})
        assert run.returncode == 0, run.stdout
        assert run.tasks["Migrate and create."]["migrations"] == MIGRATIONS
        assert run.tasks["Migrate again."]["migrations"] == []
        assert run.tasks["Migrate again."]["changed"] is False
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP DATABASE module_migrate WITH (FORCE)")


def test_migrate_alone_on_an_empty_registry_makes_the_schema_and_no_customer(pg_server, tmp_path):
    """playbooks/registry.yml's first run on a new stack: no customer or device exists yet."""
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS module_migrate_alone")
        conn.execute("CREATE DATABASE module_migrate_alone")
    dsn = pg_server.dsn_for("module_migrate_alone")
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    try:
        preview = run_playbook([_task("Preview.", migrate=True)], tmp_path, check=True, diff=True,
                               extra_vars={"registry_dsn": dsn})  # fmt: skip
        assert preview.returncode == 0, preview.stdout
        assert preview.tasks["Preview."]["changed"] is True
        assert preview.tasks["Preview."]["diff"] == {
            "before": {"pending_migrations": MIGRATIONS},
            "after": {"pending_migrations": []},
        }
        assert _rows(dsn, tables) == [(0,)]  # rolled back
        tasks = [_task("Migrate.", migrate=True), _task("Again.", migrate=True)]
        run = run_playbook(tasks, tmp_path, extra_vars={"registry_dsn": dsn})
        assert run.returncode == 0, run.stdout
        assert run.tasks["Migrate."]["migrations"] == MIGRATIONS
        assert (run.tasks["Again."]["changed"], run.tasks["Again."]["migrations"]) == (False, [])
        assert _rows(dsn, "SELECT count(*) FROM customers") == [(0,)]
        # The gateways' group role may log in to this database: their logins can be made next.
        granted = "SELECT has_database_privilege('iotistic_gateway', current_database(), 'CONNECT')"
        assert _rows(dsn, granted) == [(True,)]
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP DATABASE module_migrate_alone WITH (FORCE)")


def test_migrate_alone_refuses_what_needs_a_customer(registry_dsn, tmp_path):
    tasks = [
        {**_task("Devices without customer.", migrate=True, devices=["pump-1"]),
         "ignore_errors": True},
        {**_task("Present without customer.", devices=["pump-1"]), "ignore_errors": True},
    ]  # fmt: skip
    run = run_playbook(tasks, tmp_path, extra_vars={"registry_dsn": registry_dsn})
    msgs = {name: run.tasks[name]["msg"] for name in run.tasks}
    assert msgs["Devices without customer."] == (
        "devices requires customer (migrate alone needs none)"
    )
    assert msgs["Present without customer."] == (
        "state is present but all of the following are missing: customer"
    )
    assert _rows(registry_dsn, "SELECT count(*) FROM devices") == [(0,)]


def test_revoke_by_device_id_finds_each_customer(registry_dsn, tmp_path):
    by_id = {"devices": ["meter-1", "pump-2"], "state": "revoked",
             "revocation_reason": "key_compromise"}  # fmt: skip
    tasks = [
        _task("Acme.", customer="acme", devices=["pump-1", "pump-2"]),
        _task("Globex.", customer="globex", devices=["meter-1"]),
        {**_task("Preview by id.", **by_id), "check_mode": True},
        _task("Revoke by id.", **by_id),
        _task("Again by id.", **by_id),
    ]
    run = run_playbook(tasks, tmp_path, diff=True, extra_vars={"registry_dsn": registry_dsn})
    assert run.returncode == 0, run.stdout
    changed = {name: result["changed"] for name, result in run.tasks.items()}
    assert changed == {
        "Acme.": True,
        "Globex.": True,
        "Preview by id.": True,
        "Revoke by id.": True,
        "Again by id.": False,
    }
    revoked = run.tasks["Revoke by id."]
    assert revoked["customer"] is None
    assert [(d["id"], d["customer_id"], d["state"]) for d in revoked["devices"]] == [
        ("meter-1", "globex", "revoked"),
        ("pump-2", "acme", "revoked"),
    ]
    assert revoked["diff"] == {
        "before": {"devices": {
            "meter-1": {"customer": "globex", "state": "provisioned", "vpn_address": "100.64.16.2"},
            "pump-2": {"customer": "acme", "state": "provisioned", "vpn_address": "100.64.0.3"},
        }},
        "after": {"devices": {
            "meter-1": {"customer": "globex", "state": "revoked", "vpn_address": "100.64.16.2"},
            "pump-2": {"customer": "acme", "state": "revoked", "vpn_address": "100.64.0.3"},
        }},
    }  # fmt: skip
    assert run.tasks["Preview by id."]["diff"] == revoked["diff"]
    assert sorted(a["target"] for a in revoked["actions"]) == ["device:meter-1", "device:pump-2"]
    assert _rows(registry_dsn, "SELECT id, state FROM devices ORDER BY id") == [
        ("meter-1", "revoked"),
        ("pump-1", "provisioned"),
        ("pump-2", "revoked"),
    ]


def test_revoke_by_device_id_errors_name_the_value_and_change_nothing(registry_dsn, tmp_path):
    tasks = [
        _task("Acme.", customer="acme", devices=["pump-1"]),
        _task("Unknown id.", devices=["pump-1", "ghost"], state="revoked"),
        _task("Bad id.", devices=["Pump_1"], state="revoked"),
        _task("No customer to provision for.", devices=["pump-9"]),
        _task("No customer to remove from.", devices=["pump-1"], state="absent"),
        _task("Serials without a customer.", devices=["pump-1"], state="revoked",
              revoke_serials=["4721"]),
    ]  # fmt: skip
    for task in tasks[1:]:
        task["ignore_errors"] = True
    run = run_playbook(tasks, tmp_path, extra_vars={"registry_dsn": registry_dsn})
    msgs = {name: result.get("msg") for name, result in run.tasks.items() if name != "Acme."}
    assert msgs == {
        "Unknown id.": "device 'ghost' is not in the registry",
        "Bad id.": (
            "invalid device id 'Pump_1': use 1-63 lower-case letters, digits and inner hyphens "
            "(a DNS label)"
        ),
        "No customer to provision for.": (
            "state is present but all of the following are missing: customer"
        ),
        "No customer to remove from.": (
            "state is absent but all of the following are missing: customer"
        ),
        "Serials without a customer.": (
            "missing parameter(s) required by 'revoke_serials': customer"
        ),
    }
    assert all(run.tasks[name]["failed"] for name in msgs)
    # pump-1 came before the unknown id in the same call: the transaction left it alone.
    assert _rows(registry_dsn, "SELECT id, state FROM devices") == [("pump-1", "provisioned")]
    assert _rows(registry_dsn, "SELECT count(*) FROM audit_log WHERE action = 'device.revoke'") == [
        (0,)
    ]

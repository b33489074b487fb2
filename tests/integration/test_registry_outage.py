"""The database goes away in the middle of a batch: a clear error, nothing half-written."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from iotistic_vpn.errors import RegistryUnavailable
from iotistic_vpn.registry import Registry

pytestmark = pytest.mark.postgres
BATCH = [f"dev-{i:04d}" for i in range(2000)]


def _batch_stuck_after_inserting_devices(registry_dsn: str):
    """Start a 2,000-device batch that blocks on the audit log after writing its devices."""
    registry = Registry(registry_dsn, connect_timeout=2)
    registry.ensure_customer("acme", actor="t")
    holder = psycopg.connect(registry_dsn)
    holder.execute("LOCK TABLE audit_log IN EXCLUSIVE MODE")  # blocks the batch's audit insert
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            registry.provision_devices("acme", BATCH, actor="batch")
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    pid = None
    watcher = psycopg.connect(registry_dsn, autocommit=True)  # fresh statistics each query
    while pid is None and time.monotonic() < deadline:
        pid = watcher.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO audit_log%'"
        ).fetchone()
        time.sleep(0.02)
    watcher.close()
    assert pid is not None, "the batch never reached the audit log"
    return holder, registry, thread, outcome, pid[0]


def _device_rows(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE vpn_address IS NULL) FROM devices"
        ).fetchone()


def test_backend_killed_mid_batch(registry_dsn):
    holder, registry, thread, outcome, pid = _batch_stuck_after_inserting_devices(registry_dsn)
    holder.execute("SELECT pg_terminate_backend(%s)", (pid,))
    thread.join(10)
    holder.close()
    error = outcome["error"]
    assert isinstance(error, RegistryUnavailable)
    assert re.match(
        r"registry database postgres@127\.0\.0\.1:\d+/t_\w+ is unavailable: "
        r"terminating connection due to administrator command",
        str(error),
    )
    assert _device_rows(registry_dsn) == (0, 0)
    # The same Registry reconnects by itself once the database answers again.
    assert len(registry.provision_devices("acme", BATCH, actor="t").items) == 2000
    registry.close()


def test_server_stopped_mid_batch_then_back(registry_dsn, pg_server):
    holder, registry, thread, outcome, _ = _batch_stuck_after_inserting_devices(registry_dsn)
    pg_server.stop("immediate")
    thread.join(10)
    holder.close()
    assert isinstance(outcome["error"], RegistryUnavailable)
    assert "is unavailable: " in str(outcome["error"])
    assert pg_server.password not in str(outcome["error"])
    with pytest.raises(RegistryUnavailable, match=r"is unavailable: .*Connection refused"):
        registry.list_devices()
    pg_server.start()
    assert _device_rows(registry_dsn) == (0, 0)
    assert registry.list_devices() == []
    registry.close()

"""Allocation under contention: 50 real threads, each with its own connection."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network

import psycopg
import pytest

from iotistic_vpn.registry import Registry
from tests.support.postgres import MIGRATIONS

pytestmark = pytest.mark.postgres
WORKERS = 50


def _race(dsn: str, work) -> list:
    """Run work(registry, i) in WORKERS threads released at the same instant."""
    barrier = threading.Barrier(WORKERS)

    def one(i: int):
        with Registry(dsn) as registry:
            registry.schema_version()  # connect before the barrier, so the calls really overlap
            barrier.wait(timeout=30)
            return work(registry, i)

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, range(WORKERS)))


def test_fifty_concurrent_provisions_never_share_an_address(registry_dsn):
    with Registry(registry_dsn) as registry:
        registry.ensure_customer("acme", actor="t")
    devices = _race(
        registry_dsn, lambda reg, i: reg.provision_device("acme", f"dev-{i}", actor=f"w{i}")
    )
    addresses = [d.vpn_address for d in devices]
    assert len(set(addresses)) == WORKERS
    # Lowest-first allocation under a lock leaves no holes: .2 up to .51.
    assert sorted(int(a.split(".")[-1]) for a in addresses) == list(range(2, 2 + WORKERS))
    with psycopg.connect(registry_dsn) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT vpn_address) FROM devices").fetchone()
    assert rows == (WORKERS, WORKERS)


def test_fifty_concurrent_batches_for_one_customer(registry_dsn):
    with Registry(registry_dsn) as registry:
        registry.ensure_customer("acme", actor="t")
    results = _race(
        registry_dsn,
        lambda reg, i: reg.provision_devices("acme", [f"w{i}-{n}" for n in range(40)], actor="t"),
    )
    addresses = [d.vpn_address for r in results for d in r.items]
    assert len(addresses) == len(set(addresses)) == WORKERS * 40


def test_fifty_concurrent_new_customers_get_disjoint_blocks(registry_dsn):
    customers = _race(
        registry_dsn, lambda reg, i: reg.ensure_customer(f"cust-{i}", actor="t").items[0]
    )
    blocks = [IPv4Network(c.block) for c in customers]
    assert len(set(blocks)) == WORKERS
    ordered = sorted(blocks)
    assert all(not a.overlaps(b) for a, b in itertools.pairwise(ordered))
    assert all(b.subnet_of(IPv4Network("100.64.0.0/10")) and b.prefixlen == 20 for b in blocks)


def test_same_customer_created_concurrently_exists_once(registry_dsn):
    results = _race(registry_dsn, lambda reg, i: reg.ensure_customer("acme", actor="t"))
    assert sum(r.changed for r in results) == 1
    assert {r.items[0].block for r in results} == {"100.64.0.0/20"}


def test_concurrent_migrations_apply_once(pg_server):
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS race_migrate")
        conn.execute("CREATE DATABASE race_migrate")
    try:
        applied = _race(pg_server.dsn_for("race_migrate"), lambda reg, i: reg.migrate())
        assert sorted(map(tuple, applied)) == [()] * (WORKERS - 1) + [tuple(MIGRATIONS)]
    finally:
        with pg_server.connect() as conn:
            conn.execute("DROP DATABASE race_migrate WITH (FORCE)")

"""The API's caches follow the registry's change feed (api/follow.py), on the suite's real
PostgreSQL: a revoked token's cached answer is dropped the moment the revocation commits, tokens
are kept long only while the feed is heard, and a lost LISTEN falls back to short answers."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from iotistic_vpn.api.cache import TtlCache
from iotistic_vpn.api.follow import CacheFollower
from iotistic_vpn.api.registry_pool import APPLICATION_NAME, RegistryPool
from iotistic_vpn.registry import Registry
from iotistic_vpn.tokens import parse_token

pytestmark = pytest.mark.postgres
SHORT_S, LONG_S = 0.5, 60.0


async def _until(check, what: str, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def test_the_caches_follow_revocations_and_fall_back_when_the_feed_is_lost(registry_dsn):
    with Registry(registry_dsn) as reg:
        reg.ensure_customer("acme", actor="t")
        reg.provision_devices("acme", ["dev-1", "dev-2"], actor="t")
        tokens = {}
        for name in ("kept", "revoked"):
            _, issued = reg.ensure_token(name, customer_id="acme", actor="t")
            tokens[name] = (issued.value, reg.get_token(parse_token(issued.value)[0]))

    async def scenario() -> None:
        pool = RegistryPool(registry_dsn, 2)
        pool.open()
        token_cache, lookup_cache = TtlCache(SHORT_S), TtlCache(SHORT_S)
        follower = CacheFollower(pool, pool.listener(), token_cache, lookup_cache,
                                 short_s=SHORT_S, long_s=LONG_S)  # fmt: skip
        task = asyncio.create_task(follower.run())
        try:
            await _until(lambda: follower.following, "the follower to listen")
            await _until(lambda: token_cache.ttl_s == LONG_S, "long answers while heard")
            for value, token in tokens.values():
                token_cache.put(value, (token,))
                lookup_cache.put((token.id, "dev-1"), "scope")
            lookup_cache.put((tokens["kept"][1].id, "dev-2"), "scope")

            with Registry(registry_dsn) as reg:
                reg.revoke_token(tokens["revoked"][1].id, actor="t")
                revoked_at = time.monotonic()
            value = tokens["revoked"][0]
            await _until(lambda: token_cache.get(value) is None, "the revoked token dropped", 1)
            assert time.monotonic() - revoked_at < 1  # well inside a long answer's 60 s
            assert lookup_cache.get((tokens["revoked"][1].id, "dev-1")) is None
            assert token_cache.get(tokens["kept"][0]) == (tokens["kept"][1],)
            assert lookup_cache.get((tokens["kept"][1].id, "dev-2")) == "scope"

            with Registry(registry_dsn) as reg:
                reg.revoke_devices("acme", ["dev-2"], actor="t")
            kept_id = tokens["kept"][1].id
            await _until(lambda: lookup_cache.get((kept_id, "dev-2")) is None, "dev-2 dropped")
            assert lookup_cache.get((kept_id, "dev-1")) == "scope"

            # The LISTEN connection dies and cannot be made again for a while (the database
            # takes no new connections; the pool's open ones go on): answers are short until
            # the follower listens again.
            database = conninfo_to_dict(registry_dsn)["dbname"]
            with psycopg.connect(make_conninfo(registry_dsn, dbname="postgres"),
                                 autocommit=True) as admin:  # fmt: skip
                admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                try:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = %s AND query = 'LISTEN registry_changes'",
                        (APPLICATION_NAME,),
                    )
                    await _until(lambda: token_cache.ttl_s == SHORT_S, "short answers while deaf")
                    await asyncio.sleep(1.0)  # two attempts to listen again, both refused
                    assert token_cache.ttl_s == SHORT_S and not follower.following
                finally:
                    admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await _until(lambda: token_cache.ttl_s == LONG_S, "long answers again", 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pool.close()

    asyncio.run(scenario())

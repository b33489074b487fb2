"""The API's cache: answers expire on time, the oldest go first, a drop forgets what changed."""

from __future__ import annotations

import asyncio
import time

from iotistic_vpn.api.cache import TtlCache


def test_an_answer_is_reused_until_it_expires():
    cache = TtlCache(0.05)
    cache.put("token", ("answer",))
    assert cache.get("token") == ("answer",)
    time.sleep(0.06)
    assert cache.get("token") is None  # expired: the next request asks the registry


def test_a_full_cache_forgets_the_oldest_first():
    cache = TtlCache(60, max_entries=2)
    for key in ("a", "b", "c"):
        cache.put(key, key.upper())
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, "B", "C")
    cache.put("b", "B2")  # a new answer refreshes its place
    cache.put("d", "D")
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == ("B2", None, "D")


def test_an_answer_in_use_is_refreshed_ahead_and_never_served_past_its_life():
    import asyncio

    async def scenario() -> list:
        cache = TtlCache(0.2)
        answers = iter(["first", "second", "third"])
        asked = []

        async def load():
            asked.append(time.monotonic())
            await asyncio.sleep(0.01)  # the registry's round trip
            return next(answers)

        seen = [await cache.fetch("token", load)]  # nothing held: this request waits for it
        await asyncio.sleep(0.12)  # past half its life: served as held, asked again behind
        seen.append(await cache.fetch("token", load))
        await asyncio.sleep(0.03)
        seen.append(await cache.fetch("token", load))  # the refreshed answer, no wait
        await asyncio.sleep(0.25)  # past its whole life: never served, asked again
        seen.append(await cache.fetch("token", load))
        return [seen, len(asked)]

    seen, asked = asyncio.run(scenario())
    assert seen == ["first", "first", "second", "third"]
    assert asked == 3


def test_an_answer_loaded_across_a_drop_is_returned_but_not_kept():
    cache = TtlCache(60)

    async def scenario() -> None:
        started = asyncio.Event()

        async def slow_load():
            started.set()
            await asyncio.sleep(0.05)
            return "loaded before the revocation was heard"

        fetch = asyncio.create_task(cache.fetch("k", slow_load))
        await started.wait()
        cache.drop()  # the change feed: everything about "k" may be stale
        assert await fetch == "loaded before the revocation was heard"
        assert cache.get("k") is None
        assert await cache.fetch("k", slow_load) == "loaded before the revocation was heard"
        assert cache.get("k") is not None  # no drop this time: kept

    asyncio.run(scenario())

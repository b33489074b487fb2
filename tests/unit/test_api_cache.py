"""The API's half-second cache: answers expire on time and the oldest go first."""

from __future__ import annotations

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

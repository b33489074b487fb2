"""A small time-to-live cache for the API's hot path (bounded, one event loop, no locks)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

__all__ = ["TtlCache"]

log = logging.getLogger("iotistic_vpn.api")


class TtlCache:
    """Values kept for ttl_s seconds; the oldest go first beyond max_entries.

    `fetch` also refreshes ahead: an answer older than half its life is still served, and asked
    again in the background, so a key in steady use never makes a request wait for the
    registry; an answer is still never served past ttl_s (a revocation shows within it).
    `drop` forgets answers the registry's change feed says are stale; an answer loaded while a
    drop happened is returned to its caller but not kept, as it may predate the change.
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s  # for answers kept from now on
        self._max = max_entries
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._refreshing: dict[Hashable, asyncio.Task] = {}
        self._drops = 0  # how many drops so far: a load that saw one keeps nothing

    def drop(self, stale: Callable[[Hashable, Any], bool] | None = None) -> int:
        """Forget every answer (None) or those stale(key, value) says; return how many."""
        self._drops += 1
        gone = [k for k, (_, v) in self._items.items() if stale is None or stale(k, v)]
        for key in gone:
            del self._items[key]
        return len(gone)

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        if time.monotonic() >= item[0]:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: Hashable, value: Any, *, drops: int | None = None) -> None:
        """Keep value for ttl_s, unless a drop happened since `drops` was read."""
        if drops is not None and drops != self._drops:
            return
        self._items[key] = (time.monotonic() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    async def fetch(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The value held for key, else load()'s (kept); see the class for refresh-ahead."""
        item = self._items.get(key)
        now = time.monotonic()
        if item is not None and now < item[0]:
            if item[0] - now < self.ttl_s / 2 and key not in self._refreshing:
                self._refreshing[key] = asyncio.create_task(self._refresh(key, load))
            return item[1]
        drops = self._drops
        value = await load()
        self.put(key, value, drops=drops)
        return value

    async def _refresh(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> None:
        drops = self._drops
        try:
            self.put(key, await load(), drops=drops)
        except Exception as exc:  # whatever it was, the answer held expires on time
            log.debug("cache refresh failed, the held answer expires on time: %s", exc)
        finally:
            self._refreshing.pop(key, None)

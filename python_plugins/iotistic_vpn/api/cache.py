"""A small time-to-live cache for the API's hot path (bounded, one event loop, no locks)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["TtlCache"]


class TtlCache:
    """Values kept for ttl_s seconds; the oldest go first beyond max_entries."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        if time.monotonic() >= item[0]:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: Hashable, value: Any) -> None:
        self._items[key] = (time.monotonic() + self._ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

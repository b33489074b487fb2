"""The API's cached answers follow the registry's change feed (registry.changes).

A token's or device's cached answers are dropped the moment a change to it commits, so while
the feed is heard a token is kept `token_cache_s` (10 s) and still shows its revocation within
milliseconds; while it is not (no LISTEN, the registry away), tokens are kept only
`token_recheck_s` (half a second), as before there was a feed. A device's scope stays a
half-second answer either way: it also says whether the device is online, which is not
published. Without a notification the follower still asks for changes every POLL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..errors import RegistryUnavailable
from ..registry import Changes
from ..registry.listener import ChangeListener
from .cache import TtlCache
from .registry_pool import RegistryPool

__all__ = ["CacheFollower"]

log = logging.getLogger("iotistic_vpn.api")
POLL_S = 5.0


class CacheFollower:
    """Drops what the feed says changed from the token cache (keyed by the presented value,
    holding (ApiToken | None,)) and the lookup cache (keyed by (token id, device))."""

    def __init__(
        self, registry: RegistryPool, listener: ChangeListener, tokens: TtlCache,
        lookups: TtlCache, *, short_s: float, long_s: float,
    ) -> None:  # fmt: skip
        self.registry, self.listener = registry, listener
        self.tokens, self.lookups = tokens, lookups
        self.short_s, self.long_s = short_s, long_s
        self.cursor: str | None = None  # None: not following (yet, or again)

    @property
    def following(self) -> bool:
        return self.cursor is not None and self.listener.listening

    async def run(self) -> None:
        listening = asyncio.create_task(self.listener.run(), name="listen")
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.listener.woken.wait(), POLL_S)
                self.listener.woken.clear()
                await self.catch_up()
        finally:
            listening.cancel()

    async def catch_up(self) -> None:
        """Read the changes since the cursor and drop what they name (everything when the feed
        cannot say: at start, or too far behind)."""
        cursor = self.cursor
        try:
            if cursor is None:
                self.cursor = await self.registry.run(lambda reg: reg.change_cursor())
                self._drop_all()
            else:
                changes = await self.registry.run(lambda reg: reg.changes_since(cursor))
                if changes is None:
                    log.warning("fell behind the registry's change feed: dropping cached answers")
                    self.cursor = None
                    self._drop_all()
                    self.listener.woken.set()  # take a new cursor at once
                else:
                    self._drop(changes)
                    self.cursor = changes.cursor
        except RegistryUnavailable as exc:
            log.debug("change feed: %s", exc)
        self.tokens.ttl_s = self.long_s if self.following else self.short_s

    def _drop_all(self) -> None:
        self.tokens.drop()
        self.lookups.drop()

    def _drop(self, changes: Changes) -> None:
        tokens, devices = changes.of("token"), changes.of("device", "certificate")
        if tokens:
            self.tokens.drop(lambda _, v: v[0] is not None and v[0].id in tokens)
        if tokens or devices:
            self.lookups.drop(lambda k, _: k[0] in tokens or k[1] in devices)

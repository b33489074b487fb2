"""Letting held instances start: OpenVPN's `management-hold`, answered by the agent.

With `management-hold` an instance waits at start, and after every restart (SIGHUP, SIGUSR1),
until its management client sends `hold release`: no device is let in while nobody can decide
its connect, where without it a device that came in that window waited out its handshake
(some 20 s) and tried again. The agent releases a hold on each socket as soon as it holds it,
and whenever a `>HOLD` comes, but only once it has a registry snapshot to decide on (the
stored one after a restart): a fresh gateway whose registry never answered stays held, and its
devices go to another gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .management import ManagementClient
from .metrics import Metrics

__all__ = ["HoldRelease"]

log = logging.getLogger("iotistic_vpn.gateway")

# How often a held instance looks again for the first snapshot (read every snapshot_interval_s
# or on a change notification at most as often).
POLL_S = 0.5


class HoldRelease:
    """Releases instances' holds once `can_decide()` says connects can be decided."""

    def __init__(self, metrics: Metrics, can_decide: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._can_decide = can_decide

    async def release(self, instance: str, client: ManagementClient | None) -> None:
        """Release the instance's hold if it holds, after waiting for a snapshot if need be."""
        if client is None or not client.holding:
            return
        if not self._can_decide():
            log.warning("instance %s holds until the agent has a registry snapshot to decide "
                        "connects on", instance)  # fmt: skip
            while not self._can_decide():
                await asyncio.sleep(POLL_S)
        if await client.release_hold():
            self._metrics.holds_released.labels(instance).inc()
            log.info("instance %s: hold released: it starts and accepts devices", instance)

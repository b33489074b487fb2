"""What the registry makes of a batch of spooled events: the flusher's one registry call.

Kept apart from the agent's event loop: it runs on the registry thread and only needs the
registry and the events.
"""

from __future__ import annotations

import datetime as dt
import logging

from ..errors import InvalidValue
from ..registry import ConnectionEvent, Registry
from .store import SpooledEvent

__all__ = ["replay"]

log = logging.getLogger("iotistic_vpn.gateway")


def replay(registry: Registry, events: list[SpooledEvent]) -> int:
    """Replay events in order in one registry transaction; return how many were dropped."""
    batch = [
        ConnectionEvent(
            e["device"],
            e["gateway"],
            e["event"],
            dt.datetime.fromtimestamp(e["at"], dt.UTC),
            e.get("remote"),
        )
        for e in (item.event for item in events)
    ]
    try:
        outcomes = registry.record_connection_events(batch)
    except InvalidValue:
        # One bad event must not hold up the spool: find it, one savepoint per event.
        outcomes = []
        with registry.transaction():
            for event in batch:
                try:
                    outcomes += registry.record_connection_events([event])
                except InvalidValue as exc:
                    outcomes.append(str(exc))
    dropped = 0
    for event, outcome in zip(batch, outcomes, strict=True):
        if outcome not in ("applied", "logged"):
            # For good (device removed or revoked meanwhile): retrying cannot help.
            log.warning("dropped spooled %s of %s at %s: %s", event.event, event.device_id,
                        event.at, outcome.replace("_", " "))  # fmt: skip
            dropped += 1
    return dropped

"""What the registry makes of a batch of spooled events: the flusher's one registry call.

Kept apart from the agent's event loop: it runs on the registry thread and only needs the
registry and the events.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from ..errors import InvalidValue
from ..registry import ConnectionEvent, Registry
from .store import SpooledEvent

__all__ = ["replay"]

log = logging.getLogger("iotistic_vpn.gateway")


def replay(registry: Registry, events: list[SpooledEvent]) -> int:
    """Replay events in order in one registry transaction; return how many were dropped."""
    # Each event's age by this gateway's clock: the registry orders by its own clock, so this
    # clock's offset cannot put an event before or after another gateway's (a step of the clock
    # between an event and its replay still can; max(0) keeps it sane).
    sent = time.time()
    batch = [
        ConnectionEvent(
            e["device"],
            e["gateway"],
            e["event"],
            dt.datetime.fromtimestamp(e["at"], dt.UTC),
            e.get("remote"),
            age=max(0.0, sent - e["at"]),
            serial=int(e["serial"]) if e.get("serial", "").isdigit() else None,
            repair=e.get("source") == "reconcile",
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

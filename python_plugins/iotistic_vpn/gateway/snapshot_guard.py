"""Whether a snapshot read from the registry may replace the one the agent decides on.

Devices leave the registry by an admin's act, a few or a customer at a time. A read that loses
most of them at once is far likelier a fault (a restore half done, a role or view that suddenly
sees nothing, a truncated table) than a fleet gone, and taking it would end every session of
the gateway at the next enforcement round and refuse every reconnect. So such a snapshot is
refused, loudly, and the held one stays until the registry answers plausibly again; so are
changes that would leave as few (`DELETE FROM devices` arrives as changes).
"""

from __future__ import annotations

from ..registry import GatewayChanges
from .authorize import Snapshot

__all__ = ["MIN_LOST", "refuse_changes", "refuse_snapshot"]

# Losing more than half the devices in one read is implausible; a small fleet may still lose a
# few at once (2 of 3 devices removed is an admin's ordinary day), hence a floor.
MIN_LOST = 10


def refuse_snapshot(held: Snapshot, new: Snapshot) -> str | None:
    """Why `new` must not replace `held`, or None when it may."""
    return refuse_count(len(held.devices), len(new.devices))


def refuse_changes(held: Snapshot, changes: GatewayChanges) -> str | None:
    """Why `changes` must not be applied to `held` (they would leave too few), or None."""
    after = len(held.devices)
    for device, grant in changes.devices.items():
        after += (grant is not None) - (device in held.devices)
    return refuse_count(len(held.devices), after)


def refuse_count(before: int, after: int) -> str | None:
    if before and not after:
        return f"the registry's snapshot lists no devices (the held one has {before})"
    lost = before - after
    if lost >= MIN_LOST and lost * 2 > before:
        return f"the registry's snapshot lists {after} devices, the held one {before}"
    return None

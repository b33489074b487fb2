"""The agent's registry snapshot kept current by the change feed (registry.changes).

A LISTEN on its own connection wakes the agent the moment a change commits; it then reads only
what changed since the cursor its snapshot holds, so one revocation costs one small query and a
few dictionary updates whatever the fleet's size. It reads everything at start, when the
registry says it fell behind, and every full_read_interval_s (certificates also stop being
current by the clock alone, which no writer publishes). Without a notification it still asks
for changes every snapshot_interval_s: a lost notification or listener delays a change, it
never loses one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..crldir import CrlDir
from ..registry import GatewayChanges, Registry
from .authorize import DeviceGrant, Snapshot
from .snapshot_guard import refuse_changes

__all__ = ["Full", "apply_changes", "read_registry", "sync_revocations"]

log = logging.getLogger("iotistic_vpn.gateway")


@dataclass(frozen=True)
class Full:
    """Everything read again: the snapshot and every revoked serial."""

    snapshot: Snapshot
    revoked: set[int]


def read_registry(registry: Registry, cursor: str | None) -> Full | GatewayChanges:
    """The changes since cursor, else (no cursor, or too far behind) everything."""
    if cursor is not None:
        changes = registry.gateway_changes(cursor)
        if changes is not None:
            return changes
        log.warning("fell behind the registry's change feed: reading every device again")
    return Full(*registry.gateway_view())


def apply_changes(snapshot: Snapshot, changes: GatewayChanges) -> str | None:
    """Bring snapshot forward by changes, in place (O(changes), on the event loop); or why
    not (snapshot_guard: they would leave too few devices), the cursor kept to try again."""
    refused = refuse_changes(snapshot, changes)
    if refused is not None:
        return refused
    for device, grant in changes.devices.items():
        if grant is None:
            snapshot.devices.pop(device, None)
        else:
            snapshot.devices[device] = grant
    snapshot.cursor = changes.cursor
    snapshot.taken_at = changes.taken_at
    return None


def sync_revocations(crl: CrlDir, serials: Iterable[int], grants: list[DeviceGrant]) -> None:
    """Add revoked serials to crl-verify's directory, and the revoked ones among grants to the
    revoked devices' (tls-crypt-v2-verify refuses their keys before TLS); logged, never raised:
    a full disk must not stop enforcement. Runs in the store's thread."""
    try:
        added = crl.sync(serials)
        ids = crl.devices.sync(grants)
    except OSError as exc:
        log.error("crl-verify directory %s: %s", crl.path, exc)
        return
    if added or ids:
        log.info("crl-verify directory: %d serial(s) added, %d in all; revoked devices: %s",
                 len(added), len(crl), ", ".join(ids) or "none")  # fmt: skip

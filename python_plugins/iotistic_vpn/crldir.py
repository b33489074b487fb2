"""OpenVPN's `crl-verify DIR dir`: one empty file per revoked serial, named in decimal.

OpenVPN checks a peer by looking for a file named after its serial, so a handshake costs one
stat whatever the number of revocations. Empty files cost an inode each: 100,000 of them are a
few MB. One writer, two ways to keep the directory:
- `sync` (the gateway agent) only ever adds. A serial once revoked stays revoked, and the
  registry can forget a revoked certificate (its device is removed, the rows go with it);
  dropping the file then would let that still-unexpired certificate through TLS again.
- `mirror` (vpn_crl, beside the CRL it signs) makes the directory list exactly the CRL.
The gateway agent keeps a second directory the same way, RevokedDevices: one empty file per
revoked device id, which the gateways' tls-crypt-v2-verify script (tlsverify.sh) looks up to
drop a revoked device's packets before any TLS.
Standard library only: gateways run it without cryptography.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from . import conventions

__all__ = ["CrlDir", "RevokedDevices"]


def _touch(path: Path, names: Iterable[object], removed: Iterable[object] = ()) -> None:
    """Create empty files `names` (and remove `removed`) in path, for OpenVPN as nobody."""
    path.mkdir(parents=True, exist_ok=True)
    # 0755 and 0644 whatever the umask: OpenVPN runs as nobody once it dropped root.
    path.chmod(0o755)
    for name in names:
        fd = os.open(path / str(name), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
    for name in removed:
        (path / str(name)).unlink()


class CrlDir:
    """A crl-verify directory that OpenVPN reads after dropping root."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._known: set[int] | None = None
        # The gateway agent keeps the revoked devices' directory beside it (REVOKED_DEVICES_DIR).
        self.devices = RevokedDevices.beside(self.path)

    def __len__(self) -> int:
        return len(self._known or ())

    def _scan(self) -> set[int]:
        """Serials present; only all-digit names count, so an operator's stray file is kept."""
        if not self.path.is_dir():
            return set()
        return {
            int(e.name)
            for e in os.scandir(self.path)
            if e.name.isascii() and e.name.isdigit() and e.is_file()
        }

    def sync(self, serials: Iterable[int]) -> list[int]:
        """Create the files of serials not there yet; return the serials added."""
        if self._known is None or not self.path.is_dir():
            self._known = self._scan()
        added = sorted(set(serials) - self._known)
        _touch(self.path, added)
        self._known.update(added)
        return added

    def mirror(self, serials: Iterable[int], *, write: bool = True) -> tuple[list[int], list[int]]:
        """Make the directory hold exactly serials; return (added, removed), written if write."""
        wanted = {int(s) for s in serials}
        present = self._scan()
        added, removed = sorted(wanted - present), sorted(present - wanted)
        if write:
            _touch(self.path, added, removed)
            self._known = wanted
        return added, removed


class RevokedDevices:
    """REVOKED_DEVICES_DIR: one empty file per revoked device id, kept by the gateway agent.

    Only ever adds, as CrlDir.sync does: a revoked device id is never reused, and a removed
    device's row (gone from the registry) must not bring its key back through the gateway.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._known: set[str] | None = None

    @classmethod
    def beside(cls, crl_dir: str | os.PathLike) -> RevokedDevices:
        """The directory next to crl_dir, as CRL_DIR and REVOKED_DEVICES_DIR are placed."""
        return cls(Path(crl_dir).parent / Path(conventions.REVOKED_DEVICES_DIR).name)

    def __len__(self) -> int:
        return len(self._known or ())

    def sync(self, devices: Iterable[object]) -> list[str]:
        """Add a file for every device whose state is revoked (DeviceGrant-like objects)."""
        if self._known is None or not self.path.is_dir():
            self._known = {e.name for e in os.scandir(self.path)} if self.path.is_dir() else set()
        revoked = {d.device_id for d in devices if d.state == "revoked"}
        added = sorted(revoked - self._known)
        _touch(self.path, added)
        self._known.update(added)
        return added

"""OpenVPN's `crl-verify DIR dir`: one empty file per revoked serial, named in decimal.

OpenVPN checks a peer by looking for a file named after its serial, so a handshake costs one
stat whatever the number of revocations. Empty files cost an inode each: 100,000 of them are a
few MB. One writer, two ways to keep the directory:
- `sync` (the gateway agent) only ever adds. A serial once revoked stays revoked, and the
  registry can forget a revoked certificate (its device is removed, the rows go with it);
  dropping the file then would let that still-unexpired certificate through TLS again.
- `mirror` (vpn_crl, beside the CRL it signs) makes the directory list exactly the CRL.
Standard library only: gateways run it without cryptography.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CrlDir"]


class CrlDir:
    """A crl-verify directory that OpenVPN reads after dropping root."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._known: set[int] | None = None

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

    def _write(self, added: Iterable[int], removed: Iterable[int] = ()) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # 0755 and 0644 whatever the umask: OpenVPN runs as nobody once it dropped root.
        self.path.chmod(0o755)
        for serial in added:
            fd = os.open(self.path / str(serial), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
        for serial in removed:
            (self.path / str(serial)).unlink()

    def sync(self, serials: Iterable[int]) -> list[int]:
        """Create the files of serials not there yet; return the serials added."""
        if self._known is None or not self.path.is_dir():
            self._known = self._scan()
        added = sorted(set(serials) - self._known)
        self._write(added)
        self._known.update(added)
        return added

    def mirror(self, serials: Iterable[int], *, write: bool = True) -> tuple[list[int], list[int]]:
        """Make the directory hold exactly serials; return (added, removed), written if write."""
        wanted = {int(s) for s in serials}
        present = self._scan()
        added, removed = sorted(wanted - present), sorted(present - wanted)
        if write:
            self._write(added, removed)
            self._known = wanted
        return added, removed

"""The gateway's `crl-verify DIR dir`: one empty file per revoked serial, kept from the registry.

OpenVPN checks a peer by looking for a file named after its decimal serial, so a handshake
costs one stat whatever the number of revocations (the layout is `pki.write_crl_dir`'s).
The agent only ever adds files. A serial once revoked stays revoked, and the registry can
forget a revoked certificate (its device is removed, the rows go with it); dropping the file
then would let that still-unexpired certificate through the TLS layer again. Empty files in
one directory cost an inode each: 100,000 of them are a few MB.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CrlDir"]


class CrlDir:
    """Add-only sync of revoked serials into a directory OpenVPN reads after dropping root."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._known: set[int] | None = None

    def _scan(self) -> set[int]:
        self.path.mkdir(parents=True, exist_ok=True)
        # 0755 whatever the umask: OpenVPN runs as nobody once it dropped root.
        self.path.chmod(0o755)
        return {int(e.name) for e in os.scandir(self.path) if e.name.isdigit()}

    def __len__(self) -> int:
        return len(self._known or ())

    def sync(self, serials: Iterable[int]) -> list[int]:
        """Create the files of serials not there yet; return the serials added."""
        if self._known is None or not self.path.is_dir():
            self._known = self._scan()
        added = sorted(set(serials) - self._known)
        for serial in added:
            fd = os.open(self.path / str(serial), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
            self._known.add(serial)
        return added

"""Host routes that tell the kernel which OpenVPN instance holds a device (iproute2).

Every instance's tun carries the whole pool as a connected route, so with several instances
the kernel cannot tell them apart: a /32 per admitted device to its instance's tun does
(longest-prefix match). `ip` is called as a subprocess: iproute2 is on every gateway and its
`route del ... dev TUN` removes a route only if it still points at that tun, which is exactly
the ownership check a late DISCONNECT needs, done atomically by the kernel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

__all__ = ["RouteError", "Routes"]

log = logging.getLogger(__name__)


class RouteError(Exception):
    """`ip` refused a route change."""


class Routes:
    """The /32 host routes of one gateway's devices."""

    def __init__(self, ip: str = "ip") -> None:
        self.ip = ip

    async def _run(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.ip, *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=10)
        return proc.returncode or 0, out.decode(), err.decode().strip()

    async def replace(self, address: str, tun: str) -> None:
        """Point address/32 at tun, wherever it pointed before."""
        code, _, err = await self._run("-4", "route", "replace", f"{address}/32", "dev", tun)
        if code:
            raise RouteError(f"ip route replace {address}/32 dev {tun}: {err}")

    async def delete(self, address: str, tun: str) -> bool:
        """Remove address/32 only if it points at tun; True if a route went away."""
        code, _, _ = await self._run("-4", "route", "del", f"{address}/32", "dev", tun)
        return code == 0  # "No such process": the route is gone or points elsewhere

    async def host_routes(self, tuns: Iterable[str]) -> dict[str, str]:
        """address -> tun of every /32 route on the given tuns."""
        wanted = set(tuns)
        code, out, err = await self._run("-j", "-4", "route", "show", "table", "main")
        if code:
            raise RouteError(f"ip route show: {err}")
        routes = {}
        for route in json.loads(out or "[]"):
            dst, dev = route.get("dst", ""), route.get("dev")
            if dev in wanted and "/" not in dst and dst != "default":
                routes[dst] = dev
        return routes

    async def sync(self, wanted: dict[str, str], tuns: Iterable[str]) -> tuple[int, int]:
        """Make the /32 routes on tuns exactly `wanted` (address -> tun) in one `ip -batch`."""
        current = await self.host_routes(tuns)
        commands = [
            f"route replace {addr}/32 dev {tun}"
            for addr, tun in wanted.items()
            if current.get(addr) != tun
        ]
        added = len(commands)
        stale = [(a, t) for a, t in current.items() if a not in wanted]
        commands += [f"route del {addr}/32 dev {tun}" for addr, tun in stale]
        if commands:
            # -force: one failing line (a tun that just went away) does not stop the rest.
            code, _, err = await self._run(
                "-4", "-force", "-batch", "-", stdin="\n".join(commands).encode() + b"\n"
            )
            if code:
                log.warning("some route changes failed: %s", err)
        return added, len(stale)

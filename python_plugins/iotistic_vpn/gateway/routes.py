"""Host routes that tell the kernel which OpenVPN instance holds a device (rtnetlink).

Every instance's tun carries the whole pool as a connected route, so with several instances
the kernel cannot tell them apart: a /32 per admitted device to its instance's tun does
(longest-prefix match). The routes are changed over a netlink socket, as `ip route` does,
without a process per change: forking `ip` twice per connect cost the agent more CPU than
OpenVPN's whole handshake (bench/bench_gateway.py). A delete names the tun, so the kernel
removes the route only if it still points there, which is the ownership check a late
DISCONNECT needs, done atomically.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator

__all__ = ["RouteError", "Routes"]

# linux/netlink.h, linux/rtnetlink.h
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_ACK = 0x1, 0x2, 0x4
_NLM_F_REPLACE, _NLM_F_CREATE, _NLM_F_DUMP = 0x100, 0x400, 0x300
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_LINK, _RT_SCOPE_NOWHERE, _RTN_UNICAST = 254, 3, 253, 255, 1
_RTA_DST, _RTA_OIF, _RTA_TABLE = 1, 4, 15
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_RTA = struct.Struct("=HH")  # len, type


class RouteError(Exception):
    """The kernel refused a route change."""


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(_RTA.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            return
        yield kind, data[offset + _RTA.size : offset + length]
        offset += (length + 3) & ~3


class Routes:
    """The /32 host routes of one gateway's devices, in the main table of this namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(2.0)  # the kernel answers in microseconds; never hang the loop
        self._seq = 0
        # if_nametoindex is three system calls; a tun keeps its index until it is made again.
        self._indexes: dict[str, int] = {}

    def close(self) -> None:
        self._sock.close()

    def _request(self, kind: int, flags: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        """Send one request; yield (type, payload) of each answer until the ack or the end."""
        self._seq += 1
        seq = self._seq
        self._sock.send(_NLMSG.pack(_NLMSG.size + len(body), kind, flags, seq, 0) + body)
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, mtype, mflags, mseq, _ = _NLMSG.unpack_from(data, offset)
                payload = data[offset + _NLMSG.size : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # an answer to an earlier request that timed out
                if mtype == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                if mtype == _NLMSG_DONE:
                    return
                yield mtype, payload
                if not mflags & _NLM_F_MULTI:
                    return

    def _index(self, tun: str, *, fresh: bool) -> int:
        if fresh or tun not in self._indexes:
            try:
                self._indexes[tun] = socket.if_nametoindex(tun)
            except OSError:
                self._indexes.pop(tun, None)
                raise OSError(errno.ENODEV, f"no interface {tun}") from None
        return self._indexes[tun]

    def _change(self, kind: int, flags: int, address: str, tun: str, scope: int) -> None:
        head = _RTMSG.pack(socket.AF_INET, 32, 0, 0, _RT_TABLE_MAIN,
                           _RTPROT_BOOT if kind == _RTM_NEWROUTE else 0, scope,
                           _RTN_UNICAST if kind == _RTM_NEWROUTE else 0, 0)  # fmt: skip
        head += _attr(_RTA_DST, ipaddress.IPv4Address(address).packed)
        for fresh in (False, True):
            body = head + _attr(_RTA_OIF, struct.pack("=I", self._index(tun, fresh=fresh)))
            try:
                for _ in self._request(kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, body):
                    pass
                return
            except OSError as exc:
                # A restarted instance made its tun again under a new index: look it up anew.
                if exc.errno != errno.ENODEV or fresh:
                    raise

    def replace(self, address: str, tun: str) -> None:
        """Point address/32 at tun, wherever it pointed before (`ip route replace`)."""
        try:
            self._change(_RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_REPLACE, address, tun,
                         _RT_SCOPE_LINK)  # fmt: skip
        except OSError as exc:
            raise RouteError(f"route {address}/32 dev {tun}: {exc.strerror}") from None

    def delete(self, address: str, tun: str) -> bool:
        """Remove address/32 only if it points at tun; True if a route went away."""
        try:
            self._change(_RTM_DELROUTE, 0, address, tun, _RT_SCOPE_NOWHERE)
        except OSError as exc:
            if exc.errno in (errno.ESRCH, errno.ENODEV, errno.ENXIO):
                return False  # gone already, points elsewhere, or the tun went away
            raise RouteError(f"route {address}/32 dev {tun}: {exc.strerror}") from None
        return True

    def host_routes(self, tuns: Iterable[str]) -> dict[str, str]:
        """address -> tun of every /32 route on the given tuns."""
        names = {}
        for tun in tuns:
            try:
                names[socket.if_nametoindex(tun)] = tun
            except OSError:
                continue  # that instance is down: its tun and routes are gone
        routes = {}
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        for mtype, payload in self._request(_RTM_GETROUTE, _NLM_F_REQUEST | _NLM_F_DUMP, body):
            if mtype != _RTM_NEWROUTE:
                continue
            family, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(payload)
            attrs = dict(_attrs(payload[_RTMSG.size :]))
            if _RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[_RTA_TABLE])[0]
            oif = struct.unpack("=I", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else None
            host = family == socket.AF_INET and dst_len == 32 and _RTA_DST in attrs
            if host and table == _RT_TABLE_MAIN and oif in names:
                routes[str(ipaddress.IPv4Address(attrs[_RTA_DST]))] = names[oif]
        return routes

    def sync(self, wanted: dict[str, str], tuns: Iterable[str]) -> tuple[int, int]:
        """Make the /32 routes on tuns exactly `wanted` (address -> tun); (changed, removed)."""
        tuns = list(tuns)
        current = self.host_routes(tuns)
        changed = removed = 0
        for address, tun in wanted.items():
            if current.get(address) != tun:
                try:
                    self.replace(address, tun)
                    changed += 1
                except RouteError:
                    continue  # its tun just went away; the next sync sees it
        for address, tun in current.items():
            if address not in wanted and self.delete(address, tun):
                removed += 1
        return changed, removed

"""OpenVPN management interface: the protocol, spoken over one instance's unix socket.

The gateway agent holds each instance's socket (the interface serves one client at a time) and
uses it to authorise connects (`management-client-auth`), push stable addresses, end revoked
sessions and read the instance's own `status` for reconciliation. With `management-hold` an
instance waits, at start and after every restart, until its holder sends `hold release` (`Hold`,
`ManagementClient.release_hold`). Parsing is kept apart from I/O so it can be checked on
recorded transcripts as well as against a live OpenVPN.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "HALT",
    "NEXT_REMOTE",
    "ClientEvent",
    "Hold",
    "ManagementClient",
    "ManagementError",
    "ManagementParser",
    "StatusClient",
    "client_auth",
    "client_deny",
    "client_kill",
    "parse_status",
    "quote",
    "send_elsewhere",
]


READ_CHUNK = 1 << 16
# `env-filter 1`: OpenVPN sends a client's X509_* fields and a short list (tls_serial_*,
# untrusted_ip, ifconfig_pool_*, bytes and duration) instead of its whole environment (the
# client's IV_* peer info, digests, ports...): a third of the lines per event to send and parse.
ENV_FILTER = "env-filter 1"


class ManagementError(Exception):
    """OpenVPN answered a command with ERROR, or the socket went away."""


@dataclass(frozen=True)
class ClientEvent:
    """A `>CLIENT:` notification: CONNECT/REAUTH carry the client's environment."""

    kind: str  # CONNECT, REAUTH, ESTABLISHED, DISCONNECT, ADDRESS, CR_RESPONSE
    cid: int
    kid: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    address: str | None = None  # for ADDRESS
    # Names that came more than once in the ENV block (the last value is in env): a client can
    # send its own lines before the real ones, so the decision must see the repetition.
    repeated: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Hold:
    """A `>HOLD:` notification: the instance starts (again) only after `hold release`.

    OpenVPN sends it when it enters the hold, and again in the greeting to every client that
    connects while it waits, so a holder that (re)connects learns it from its first reply.
    """

    kind: ClassVar[str] = "HOLD"
    cid: ClassVar[None] = None  # no client: read like a ClientEvent where events are logged
    pause_s: int = 0  # what OpenVPN would have paused without the hold (0 at start)


@dataclass(frozen=True)
class StatusClient:
    """One CLIENT_LIST row of `status 3`."""

    common_name: str
    real_address: str
    virtual_address: str
    cid: int
    connected_since: int


def quote(arg: str) -> str:
    """Quote an argument the way the management interface parses it."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def client_auth(
    cid: int,
    kid: int,
    address: ipaddress.IPv4Address | str,
    netmask: str,
    extra: tuple[str, ...] = (),
) -> str:
    """Accept a connect and push the device's stable address (multi-line command)."""
    lines = [f"client-auth {cid} {kid}", f"ifconfig-push {address} {netmask}", *extra, "END"]
    return "\n".join(lines)


def client_deny(cid: int, kid: int, reason: str, client_reason: str | None = None) -> str:
    """Refuse a connect; `reason` is logged by OpenVPN, `client_reason` is sent to the device."""
    cmd = f"client-deny {cid} {kid} {quote(reason)}"
    if client_reason is not None:
        cmd += f" {quote(client_reason)}"
    return cmd


# What a killed client is told on its control channel (OpenVPN's send_restart): HALT stops it;
# RESTART,[N] makes it reconnect at once to the next remote of its list, another gateway.
HALT, NEXT_REMOTE = "HALT", "RESTART,[N]"


def client_kill(cid: int, message: str = HALT) -> str:
    """End a session, telling the client `message` (HALT or NEXT_REMOTE)."""
    return f"client-kill {cid} {message}"


def parse_status(lines: list[str]) -> list[StatusClient]:
    """Parse the CLIENT_LIST rows of `status 3` (tab separated)."""
    clients = []
    for line in lines:
        if not line.startswith("CLIENT_LIST\t"):
            continue
        cols = line.split("\t")
        # CLIENT_LIST, CN, real addr, virtual addr, v6, rx, tx, since, since_t, user, cid, ...
        clients.append(
            StatusClient(
                common_name=cols[1],
                real_address=cols[2],
                virtual_address=cols[3],
                cid=int(cols[10]),
                connected_since=int(cols[8]),
            )
        )
    return clients


_ENV = ">CLIENT:ENV,"
_ENV_END = ">CLIENT:ENV,END"


class ManagementParser:
    """Split the line stream into real-time notifications and command replies."""

    def __init__(self) -> None:
        self._pending: ClientEvent | None = None
        self._env: dict[str, str] = {}
        self._repeated: set[str] = set()
        self._partial = b""

    def feed_bytes(self, data: bytes) -> list[ClientEvent | Hold | str]:
        """Parse a chunk read from the socket; a line split across chunks waits for its end.

        Most lines are `>CLIENT:ENV` (some 70 per reconnect even with ENV_FILTER), so they
        take a short path of their own.
        """
        complete, newline, self._partial = (self._partial + data).rpartition(b"\n")
        if not newline:
            return []
        items: list[ClientEvent | Hold | str] = []
        env = self._env
        text = complete.decode("utf-8", "replace").removesuffix("\r")  # OpenVPN ends lines CRLF
        for line in text.replace("\r\n", "\n").split("\n"):
            if line.startswith(_ENV) and line != _ENV_END:
                name, _, value = line[len(_ENV) :].partition("=")
                if name in env:
                    self._repeated.add(name)
                env[name] = value
                continue
            item = self.feed(line)
            if item is not None:
                items.append(item)
            env = self._env  # a new event starts a new environment
        return items

    def feed(self, line: str) -> ClientEvent | Hold | str | None:
        """Return a finished ClientEvent, a Hold, a reply line, or None while an event is
        incomplete."""
        if not line.startswith(">"):
            return line
        tag, _, body = line[1:].partition(":")
        if tag == "HOLD":  # ">HOLD:Waiting for hold release:N"
            pause = body.rpartition(":")[2]
            return Hold(int(pause) if pause.isdigit() else 0)
        if tag != "CLIENT":
            return None  # >INFO, >LOG...: nothing the agent acts on
        kind, _, args = body.partition(",")
        parts = args.split(",")
        if kind == "ENV":
            if args == "END":
                event, self._pending = self._pending, None
                env, self._env = self._env, {}
                repeated, self._repeated = frozenset(self._repeated), set()
                if event is None:
                    return None
                # The environment is the event's own from here on: nothing copies it again.
                return ClientEvent(event.kind, event.cid, event.kid, env, repeated=repeated)
            name, _, value = args.partition("=")
            if name in self._env:
                self._repeated.add(name)
            self._env[name] = value
            return None
        if kind == "ADDRESS":
            return ClientEvent(kind, int(parts[0]), address=parts[1])
        # CONNECT/REAUTH/ESTABLISHED/DISCONNECT/CR_RESPONSE: an ENV block follows.
        self._env, self._repeated = {}, set()
        kid = int(parts[1]) if kind in {"CONNECT", "REAUTH", "CR_RESPONSE"} else None
        self._pending = ClientEvent(kind, int(parts[0]), kid)
        return None


class ManagementClient:
    """One management socket: serialised commands, and a queue of client events."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.events: asyncio.Queue[ClientEvent | Hold | None] = asyncio.Queue()
        self.holding = False  # a >HOLD came and no `hold release` has been sent since
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Queue[str | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the socket and start reading; raises OSError if OpenVPN is not there."""
        self._reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._task = asyncio.create_task(self._read_loop(), name=f"mgmt:{self.path}")

    async def close(self) -> None:
        """Close the socket; pending readers see the end."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read_loop(self) -> None:
        parser = ManagementParser()
        assert self._reader is not None
        try:
            # Whole chunks, not lines: one wake-up per burst instead of one per line.
            while data := await self._reader.read(READ_CHUNK):
                for item in parser.feed_bytes(data):
                    if isinstance(item, str):
                        self._replies.put_nowait(item)
                        continue
                    if isinstance(item, Hold):
                        self.holding = True
                    self.events.put_nowait(item)
        finally:
            # Wake whoever waits: the instance went away.
            self.events.put_nowait(None)
            self._replies.put_nowait(None)

    async def _reply_line(self, timeout: float) -> str:
        # asyncio.timeout, not wait_for: wait_for wraps the get in a task of its own each time.
        async with asyncio.timeout(timeout):
            line = await self._replies.get()
        if line is None:
            raise ManagementError(f"{self.path}: management socket closed")
        return line

    async def command(
        self, cmd: str, *, multiline: bool = False, timeout: float = 5.0
    ) -> list[str]:
        """Send a command; return its SUCCESS line, or every line up to END for `multiline`."""
        if self._writer is None:
            raise ManagementError(f"{self.path}: not connected")
        async with self._lock:
            self._writer.write(cmd.encode() + b"\n")
            await self._writer.drain()
            lines: list[str] = []
            while True:
                try:
                    line = await self._reply_line(timeout)
                except TimeoutError:
                    # A late reply would be read as the next command's: the link is out of
                    # step for good. Drop it; its holder re-opens it and resynchronises.
                    self._writer.close()
                    raise ManagementError(
                        f"{self.path}: {cmd.splitlines()[0]!r}: no reply in {timeout:g}s;"
                        " dropping the link"
                    ) from None
                if line.startswith("ERROR:"):
                    raise ManagementError(f"{self.path}: {cmd.splitlines()[0]!r}: {line}")
                if multiline:
                    if line == "END":
                        return lines
                    lines.append(line)
                elif line.startswith("SUCCESS:"):
                    return [line]
                # Anything else before SUCCESS is the greeting or echoed noise: skip it.

    async def filter_env(self) -> None:
        """Ask for the short client environment (ENV_FILTER) from here on."""
        await self.command(ENV_FILTER)

    async def status(self) -> list[StatusClient]:
        """The instance's own view of who is connected."""
        return parse_status(await self.command("status 3", multiline=True))

    async def release_hold(self) -> bool:
        """Let a holding instance start; False (and nothing sent) when it is not holding, so
        a True says a hold really was released."""
        if not self.holding:
            return False
        self.holding = False  # before the reply: a hold that comes after it is a new one
        await self.command("hold release")
        return True

    async def iter_events(self) -> AsyncIterator[ClientEvent | Hold]:
        """Yield client events and holds, in the order they came, until the socket closes."""
        while (event := await self.events.get()) is not None:
            yield event


async def send_elsewhere(client: ManagementClient, rate: float) -> int:
    """End every session of one instance at `rate` per second, each client told to go to the
    next gateway of its list at once (NEXT_REMOTE); return how many were ended. A drain's
    bounded rate keeps the devices from reaching the other gateways in the same second."""
    ended = 0
    for status in await client.status():
        with contextlib.suppress(ManagementError):  # it left by itself meanwhile
            await client.command(client_kill(status.cid, NEXT_REMOTE))
            ended += 1
        await asyncio.sleep(1.0 / rate)
    return ended

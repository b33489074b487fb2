"""The cloud API's side of a gateway's tunnel service: one mutual-TLS CONNECT per stream.

The API proves itself with its tunnel client certificate and checks that the gateway's own
certificate names the gateway it meant to reach (the registry says which gateway holds the
device), or, where every gateway serves the fleet's one certificate (the cloud's autoscaled
gateways, see roles/cloud_gateway), that it names the fleet. What it gets back is a plain byte
stream to DEVICE:PORT.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from ..conventions import TUNNEL_SERVICE_PORT
from ..streams import CHUNK

__all__ = ["DialError", "TunnelDialer"]


class DialError(Exception):
    """The gateway would not or could not open the tunnel; status is its answer (0: no answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status, self.reason = status, reason

    @property
    def answer(self) -> int:
        """What the API answers its client: the device is not on that gateway (any more):
        503 offline; a closed port 403; no answer from the device 504; anything else 502."""
        return {404: 503, 403: 403, 504: 504}.get(self.status, 502)


@dataclass(frozen=True)
class TunnelDialer:
    """Opens tunnels through gateways with one client certificate."""

    cert: str
    key: str
    ca: str
    connect_timeout_s: float = 5.0
    port: int = TUNNEL_SERVICE_PORT
    tls_name: str = ""  # the name every gateway's certificate carries; "": each its own name

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def open(
        self,
        gateway: str,
        device: str,
        port: int,
        *,
        address: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream to device:port through gateway (dialled at address, default its name)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address or gateway,
                    self.port,
                    ssl=context or self.context(),
                    server_hostname=self.tls_name or gateway,
                    limit=CHUNK,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise DialError(0, f"gateway {gateway} did not answer in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise DialError(0, f"gateway {gateway} unreachable: {exc}") from None
        try:
            writer.write(
                f"CONNECT {device}:{port} HTTP/1.1\r\nHost: {device}:{port}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.connect_timeout_s)
        except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise DialError(0, f"gateway {gateway} dropped the tunnel request ({exc!r})") from None
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 200:
            writer.close()
            raise DialError(status, parts[2] if len(parts) > 2 else status_line)
        return reader, writer

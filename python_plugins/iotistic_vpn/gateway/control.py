"""The agent's control socket, both ends: root only, beside the agent's state.

One request a connection: `drain RATE` (sessions sent to their next gateway per second), answered
`drained N` or `error: ...`. The running agent serves it; `drain` on the command line asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = ["ask_drain", "serve_control"]

log = logging.getLogger("iotistic_vpn.gateway")


async def serve_control(
    path: Path, drain: Callable[[float], Awaitable[int]]
) -> asyncio.AbstractServer:
    """Listen on path; each `drain RATE` runs drain(RATE)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            words = (await asyncio.wait_for(reader.readline(), timeout=5)).decode().split()
            if len(words) == 2 and words[0] == "drain" and float(words[1]) > 0:
                killed = await drain(float(words[1]))
                writer.write(f"drained {killed}\n".encode())
            else:
                writer.write(b"error: use 'drain RATE'\n")
            await writer.drain()
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("control request failed: %s", exc)
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o077)  # root only from the first moment
    try:
        return await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old)


async def ask_drain(path: Path, rate: float, timeout: float) -> str:
    """The running agent's answer to `drain RATE`; OSError when no agent listens on path."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(f"drain {rate}\n".encode())
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), timeout)).decode().strip()
    finally:
        writer.close()

"""Byte pipes between two asyncio stream pairs: the gateway's tunnels and the API's CONNECTs."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

__all__ = ["CHUNK", "pipe"]

CHUNK = 256 * 1024


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, counts: list, i: int):
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await src.read(CHUNK):
            dst.write(data)
            counts[i] += len(data)
            await dst.drain()


async def pipe(reader, writer, up_reader, up_writer) -> tuple[int, int]:
    """Copy both ways until one side is done, then end both (a TLS stream has no half-close).

    Returns (bytes to the device, bytes from it).
    """
    counts = [0, 0]
    tasks = (
        asyncio.create_task(_copy(reader, up_writer, counts, 0)),
        asyncio.create_task(_copy(up_reader, writer, counts, 1)),
    )
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        up_writer.close()
    return counts[0], counts[1]

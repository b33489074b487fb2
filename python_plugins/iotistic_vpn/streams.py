"""Byte pipes between two asyncio stream pairs: the gateway's tunnels and the API's CONNECTs."""

from __future__ import annotations

import asyncio

__all__ = ["CHUNK", "pipe"]

CHUNK = 256 * 1024


class _Splice(asyncio.Protocol):
    """One end of a pipe: what its transport reads goes straight to the peer's transport.

    Written at the protocol level, not as two read/write loops over the streams: a piece of
    data crosses in the callback that received it, without waking a task for it (each hop of a
    small request through the gateway cost some 60 us more as loops, bench/bench_api.py).
    Flow control is the transports' own: when a peer cannot take more (pause_writing), this end
    stops reading until it can.
    """

    def __init__(self, transport: asyncio.Transport, done: asyncio.Future, counts: list, i: int):
        self.transport, self._done, self._counts, self._i = transport, done, counts, i
        self.peer: _Splice | None = None

    def data_received(self, data: bytes) -> None:
        self._counts[self._i] += len(data)
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self._end()
        return False  # close: a TLS stream has no half-close, so neither end keeps one

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def _end(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


def _read_ahead(reader: asyncio.StreamReader) -> bytes:
    """What the stream had read beyond the last call (a client may send its first bytes right
    after the CONNECT head). asyncio offers no public way to take it; CPython keeps it in
    `_buffer` (since 3.4)."""
    data = bytes(reader._buffer)
    reader._buffer.clear()
    return data


async def pipe(reader, writer, up_reader, up_writer) -> tuple[int, int]:
    """Copy both ways until one side is done, then end both (a TLS stream has no half-close).
    The streams are not used again. Returns (bytes to the device, bytes from it)."""
    done = asyncio.get_running_loop().create_future()
    counts = [0, 0]
    down = _Splice(writer.transport, done, counts, 0)  # reads the client, writes the device
    up = _Splice(up_writer.transport, done, counts, 1)
    down.peer, up.peer = up, down
    try:
        for end, stream in ((down, reader), (up, up_reader)):
            ahead = _read_ahead(stream)
            end.transport.set_protocol(end)
            if ahead:
                end.data_received(ahead)
            if stream.at_eof() or end.transport.is_closing():
                end._end()  # it had ended before the splice: nothing more will arrive
            end.transport.resume_reading()  # the stream may have paused it at its limit
        await done
    finally:
        writer.close()
        up_writer.close()
    return counts[0], counts[1]

"""Reachability of a fleet of device namespaces, in two processes instead of one per device.

  listen NAMES_JSON   one listening socket on :48484 inside each named network namespace
                      (setns(2) around socket(), then back: a socket stays in the namespace it
                      was made in), all served by one asyncio loop; each answers a GET with
                      {"device_id": ..., "listener": "fleet_probe"}. Prints "listening on N".
  ask ARGS_JSON       dial every device through the gateway's tunnel service (TunnelDialer, the
                      cloud API's own dialer), at most `concurrency` at once; prints one JSON
                      object: device -> the device_id it answered with, or the error.

  hold ARGS_JSON      open one tunnel to `device` through the tunnel service as `ask` does and keep
                      it: prints "open", then "closed <CLOCK_MONOTONIC seconds>" when the gateway
                      ends it, then "redial <the answer or the error>" of a new dial. What the
                      revoke benchmark times as the cloud's live tunnel to the device gone.

NAMES_JSON is {"device id": "netns name"}; run as root (setns needs CAP_SYS_ADMIN).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import socket
import sys
import time
from pathlib import Path

from iotistic_vpn.api.dialer import DialError, TunnelDialer
from iotistic_vpn.conventions import DEVICE_AGENT_PORT

PORT = DEVICE_AGENT_PORT
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listening_sockets(namespaces: dict[str, str]) -> dict[str, socket.socket]:
    """device -> a socket listening on 0.0.0.0:PORT inside that device's namespace."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    made = {}
    try:
        for device, netns in namespaces.items():
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _setns(fd)
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", PORT))  # noqa: S104 - inside the device's namespace
                sock.listen(16)
                sock.setblocking(False)
                made[device] = sock
            finally:
                _setns(home)
                os.close(fd)
    finally:
        os.close(home)
    return made


async def _serve(namespaces: dict[str, str]) -> None:
    sockets = listening_sockets(namespaces)

    def handler(device: str):
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                body = json.dumps({"device_id": device, "listener": "fleet_probe"}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        return answer

    servers = [await asyncio.start_server(handler(d), sock=s) for d, s in sockets.items()]
    print(f"listening on {len(servers)}", flush=True)
    await asyncio.Event().wait()  # until SIGTERM


async def _ask(args: dict) -> dict[str, str]:
    dialer = TunnelDialer(args["cert"], args["key"], args["ca"], connect_timeout_s=5)
    context = dialer.context()
    gate = asyncio.Semaphore(args["concurrency"])

    async def one(device: str) -> str:
        async with gate:
            try:
                reader, writer = await dialer.open(
                    args["gateway"], device, PORT, address=args["address"], context=context
                )
            except DialError as exc:
                return f"dial {exc.status}: {exc.reason}"
            try:
                writer.write(f"GET / HTTP/1.1\r\nHost: {device}\r\n\r\n".encode())
                await writer.drain()
                data = await asyncio.wait_for(reader.read(), 10)
            except (OSError, TimeoutError) as exc:
                return f"no answer: {exc!r}"
            finally:
                writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            try:
                return str(json.loads(body)["device_id"])
            except (ValueError, KeyError):
                return f"bad answer: {head[:80]!r}"

    devices = args["devices"]
    answers = await asyncio.gather(*(one(d) for d in devices))
    return dict(zip(devices, answers, strict=True))


async def _hold(args: dict) -> None:
    dialer = TunnelDialer(args["cert"], args["key"], args["ca"], connect_timeout_s=5)
    device = args["device"]
    reader, writer = await dialer.open(args["gateway"], device, PORT, address=args["address"])
    print("open", flush=True)
    # The listener answers only after a whole request: nothing is sent, so the read ends when
    # the tunnel does (bounded: a tunnel left open is reported, not waited for).
    try:
        await asyncio.wait_for(reader.read(), args.get("timeout", 30))
        print(f"closed {time.monotonic():.6f}", flush=True)
    except TimeoutError:
        print("still open", flush=True)
    finally:
        writer.close()
    try:
        _, w = await dialer.open(args["gateway"], device, PORT, address=args["address"])
        w.close()
        print("redial open", flush=True)
    except DialError as exc:
        print(f"redial {exc.status}: {exc.reason}", flush=True)


def main(argv: list[str]) -> None:
    command, path = argv
    data = json.loads(Path(path).read_text())
    if command == "listen":
        asyncio.run(_serve(data))
    elif command == "ask":
        print(json.dumps(asyncio.run(_ask(data))), flush=True)
    elif command == "hold":
        asyncio.run(_hold(data))
    else:
        sys.exit(f"unknown command {command!r}: use listen, ask or hold")


if __name__ == "__main__":
    main(sys.argv[1:])

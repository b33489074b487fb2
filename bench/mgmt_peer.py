"""A scripted OpenVPN management peer for bench_agent.py: the agent's side of a connect storm.

It speaks what OpenVPN 2.6 sends with `management-client-auth` and `env-filter 1` (the same
variables, recorded from a real instance): for each client a CONNECT block, then, once the
agent's `client-auth` arrived, the ESTABLISHED block and ADDRESS; from the second round on each
client's previous session ends with a DISCONNECT first, as OpenVPN does when a device reconnects.
Clients are paced at RATE per second in bursts of BURST. Blocking and single-threaded, so its
own CPU stays out of the agent's. It prints "listening", then "ready" once the agent adopted
it; each "go" line on stdin runs one round and prints "round N done"; "end" (or end of input)
closes the socket.

    python3 bench/mgmt_peer.py SOCKET SERIALS_FILE --rate 400 --burst 20
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

_IV = ("IV_CIPHERS=AES-256-GCM:CHACHA20-POLY1305", "IV_COMP_STUB=1", "IV_COMP_STUBv2=1",
       "IV_LZO_STUB=1", "IV_MTU=1600", "IV_PLAT=linux", "IV_PROTO=990", "IV_TCPNL=1",
       "IV_VER=2.6.14")  # fmt: skip


def _block(header: str, env: list[str]) -> bytes:
    lines = [header, *(f">CLIENT:ENV,{e}" for e in env), ">CLIENT:ENV,END"]
    return ("\r\n".join(lines) + "\r\n").encode()


def _cert_env(device: str, serial: int, address: str) -> list[str]:
    return [
        f"X509_0_CN={device}", "X509_0_O=bench", "X509_1_CN=Iotistic VPN Issuing CA",
        "X509_2_CN=Iotistic VPN Root CA", f"daemon_pid={os.getpid()}",
        "daemon_start_time=1764568800", "dev=tun0", "ifconfig_local=100.127.255.1",
        "ifconfig_netmask=255.192.0.0", f"tls_serial_0={serial}", "tls_serial_1=1234567",
        "tls_serial_2=7654321", f"tls_serial_hex_0={serial:x}", "tls_serial_hex_1=12:d6:87",
        "tls_serial_hex_2=74:cb:b1", f"untrusted_ip={address}", "username=",
    ]  # fmt: skip


class Peer:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def command(self) -> list[str]:
        """Read one command (a client-auth runs to END) and answer it as OpenVPN does."""
        line = self._line()
        if line.startswith("client-auth "):
            lines = [line]
            while (more := self._line()) != "END":
                lines.append(more)
            self.send(b"SUCCESS: client-auth command succeeded\r\n")
            return lines
        if line.startswith("status"):
            self.send(b"TITLE\tOpenVPN 2.6.14 (bench peer)\r\nEND\r\n")
        elif line.startswith("env-filter"):
            self.send(b"SUCCESS: env_filter_level=1\r\n")
        else:
            self.send(f"SUCCESS: {line.split()[0]} command succeeded\r\n".encode())
        return [line]

    def _line(self) -> str:
        while b"\n" not in self.buf:
            data = self.conn.recv(65536)
            if not data:
                raise EOFError("the agent closed the management socket")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode().rstrip("\r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", type=Path)
    parser.add_argument("serials", type=Path, help="lines of 'device serial'")
    parser.add_argument("--rate", type=float, default=400.0, help="connects per second")
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    devices = [line.split() for line in args.serials.read_text().splitlines() if line.strip()]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    args.socket.unlink(missing_ok=True)
    server.bind(str(args.socket))
    server.listen(1)
    print("listening", flush=True)
    conn, _ = server.accept()
    peer = Peer(conn)
    peer.send(b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n")
    while not peer.command()[0].startswith("status"):  # env-filter, then status: adopted
        pass
    print("ready", flush=True)
    cid = 0
    round_no = 0
    while sys.stdin.readline().strip() == "go":
        cid = storm_round(peer, devices, round_no, cid, args.rate, args.burst)
        print(f"round {round_no} done", flush=True)
        round_no += 1
    conn.close()


def storm_round(
    peer: Peer, devices: list[list[str]], round_no: int, cid: int, rate: float, burst_size: int
) -> int:
    """Every device connects once, replacing its previous session; return the next client id."""
    started = time.perf_counter()
    for first in range(0, len(devices), burst_size):
        burst = devices[first : first + burst_size]
        out = b""
        for i, (device, serial) in enumerate(burst, start=first):
            address = f"198.18.{i // 250}.{i % 250 + 2}"
            if round_no:
                old = cid - len(devices)
                out += _block(f">CLIENT:DISCONNECT,{old}", [
                    *_cert_env(device, int(serial), address)[:12],
                    "bytes_received=4096", "bytes_sent=4096", "time_duration=5",
                    f"ifconfig_pool_remote_ip={address}", "ifconfig_pool_netmask=255.192.0.0",
                ])  # fmt: skip
            out += _block(f">CLIENT:CONNECT,{cid},1", [*_IV, *_cert_env(device, int(serial),
                                                                        address)])  # fmt: skip
            cid += 1
        peer.send(out)
        for _ in burst:
            auth = peer.command()
            got = int(auth[0].split()[1])
            vpn = auth[1].split()[1] if len(auth) > 1 else ""
            peer.send(
                _block(f">CLIENT:ESTABLISHED,{got}", [f"ifconfig_pool_remote_ip={vpn}"])
                + f">CLIENT:ADDRESS,{got},{vpn},1\r\n".encode()
            )
        # Pace the bursts; the agent's replies above already wait for it.
        due = started + (first + len(burst)) / rate
        time.sleep(max(0.0, due - time.perf_counter()))
    return cid


if __name__ == "__main__":
    main()

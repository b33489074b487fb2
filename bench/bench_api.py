"""Cloud API benchmark: what a request through the API costs against going direct, same run.

The setup is the integration harness's (tests/support/gateway_harness.py, api_harness.py): a
gateway namespace with two OpenVPN instances and the agent with its tunnel service, a device
namespace with its OpenVPN client and the stand-in agent on :48484, and the cloud API as its own
process in the `api` namespace (uvicorn, here on 127.0.0.1 TCP in that namespace, its CONNECT
proxy on 127.0.0.1:3128 there too), on a throwaway PostgreSQL registry. Two client processes,
the same code (this file with --worker), run inside namespaces so that only the path differs:

  API     in the `api` namespace:  client -> 127.0.0.1 (the API) -> mutual-TLS CONNECT to the
          gateway's tunnel service -> OpenVPN tun -> the device's agent
  direct  in the gateway namespace: client -> VPN_IP:48484 over the OpenVPN tun

Measured, each subject and anchor interleaved through bench/ratios.py (A B, B A, ..., one
warm-up pair and --pairs more, 5 by default; each ratio is the median of its per-pair ratios
with their min and max):

  1. latency of a small GET, keep-alive, one request at a time (a small raw-socket HTTP/1.1
     client): p50 and p99 of --requests per trial; goals API/direct <= 1.5x (p50), <= 2x (p99).
     The small GET is /v1/blob?bytes=0 (200, empty body): the stand-in answers /ping and
     /v1/device in two writes without TCP_NODELAY, so each keep-alive answer waits some 40 ms
     for a delayed ACK on either path (see SMALL); /ping is measured too, with fewer requests.
     Beside them, the API alone (no device leg): GET /v1/devices/dev-a and /healthz.
  2. requests/s with 64 concurrent clients (asyncio + httpx, one keep-alive AsyncClient each)
     for --seconds a trial, with the client's and the API's CPU per request
  3. a 100 MB GET /v1/blob through the API's TCP tunnel (CONNECT dev-a.acme:48484 with
     Proxy-Authorization) vs the same GET direct; goal >= 0.8
  4. token revoked (Registry.revoke_token) -> the next request with it refused (401): the
     distribution over --revocations trials, goal p99 < 1 s (not a ratio)

Everything stays in the project's own namespaces and loopback. Needs root.

  .venv/bin/python bench/bench_api.py [--pairs 5] [--requests 400] [--seconds 3] [--blob-mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ratios import Ratio, alternate, percentile  # noqa: E402
from iotistic_vpn.conventions import TUNNEL_SERVICE_PORT  # noqa: E402
from tests.support.procstat import cpu_seconds  # noqa: E402

WORK_ROOT = REPO / "build"  # as bench_gateway.py: traversable by nobody, faster than /tmp here
API_PORT = 8000
CONNECT_PORT = 3128
DEVICE = "dev-a"
CUSTOMER = "acme"
AGENT_PORT = 48484
CONCURRENCY = 64
# The small GET: the stand-in answers it (200, Content-Length: 0) in one write. It answers /ping
# and /v1/device in two (headers, then body) on a socket without TCP_NODELAY, so on a keep-alive
# connection the body waits for the ACK of the headers, which the peer delays: some 40 ms a
# request on either path. /ping is measured too, to show it; the API's cost is read on SMALL.
SMALL = "/v1/blob?bytes=0"
PING = "/ping"


# -- the client processes (run inside a namespace: `bench_api.py --worker`) ---------------------


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on one blocking socket: little of its own cost."""

    def __init__(self, host: str, port: int, timeout: float = 60.0, tunnel: dict | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._scratch = memoryview(bytearray(1 << 20))
        if tunnel is not None:
            self._connect_through(tunnel)

    def _connect_through(self, tunnel: dict) -> None:
        """Become a tunnel through the gateway's tunnel service, as the API opens one: mutual
        TLS with the API's client certificate, one CONNECT to the device's agent."""
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tunnel["ca"])
        ctx.load_cert_chain(tunnel["cert"], tunnel["key"])
        self.sock = ctx.wrap_socket(self.sock, server_hostname=tunnel["gateway"])
        target = tunnel["target"]
        self.sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        status, _ = self.head()
        if status != 200:
            raise RuntimeError(f"CONNECT {target}: {status}")

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split(" ", 2)[1]), headers

    def _discard(self, size: int) -> None:
        """Read and drop exactly size bytes (recv_into one buffer: no copies kept)."""
        taken = min(size, len(self.buf))
        self.buf = self.buf[taken:]
        size -= taken
        while size > 0:
            got = self.sock.recv_into(self._scratch, min(size, len(self._scratch)))
            if not got:
                raise ConnectionError(f"the server closed the connection {size} bytes short")
            size -= got

    def body(self, headers: dict[str, str]) -> int:
        """Read the body the headers announce; its size."""
        if "content-length" in headers:
            size = int(headers["content-length"])
            self._discard(size)
            return size
        if headers.get("transfer-encoding", "").lower() == "chunked":
            total = 0
            while size := int(self._line().split(b";")[0], 16):
                self._discard(size + 2)  # the chunk and its CRLF
                total += size
            while self._line():  # trailers, then the empty line
                pass
            return total
        raise ValueError(f"no length in the answer: {headers}")

    def request(self, path: str, headers: dict[str, str]) -> tuple[int, int]:
        """GET path; (status, body bytes)."""
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock.sendall((head + "\r\n").encode())
        status, answer = self.head()
        return status, self.body(answer)


def _latency(cmd: dict) -> dict:
    """cmd["n"] GETs one at a time on one keep-alive connection (opened, and used once, first)."""
    conn = RawHttp(cmd["host"], cmd["port"], tunnel=cmd.get("tunnel"))
    try:
        status, _ = conn.request(cmd["path"], cmd["headers"])
        if status != 200:
            raise RuntimeError(f"GET {cmd['path']}: {status}")
        times = []
        clock = time.perf_counter
        for _ in range(cmd["n"]):
            start = clock()
            status, _ = conn.request(cmd["path"], cmd["headers"])
            times.append(clock() - start)
            if status != 200:
                raise RuntimeError(f"GET {cmd['path']}: {status}")
        return {"times": times}
    finally:
        conn.close()


async def _load(cmd: dict) -> dict:
    """cmd["clients"] concurrent keep-alive GET loops for cmd["seconds"]: requests and CPU."""
    import httpx

    # One AsyncClient (one keep-alive connection) per client: a single client's pool of 64
    # connections costs some 5 ms of CPU a request in httpcore's pool bookkeeping, ten times
    # what a request costs otherwise, and would cap both paths at the client's ceiling.
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=cmd["base"], headers=cmd["headers"], timeout=30)
            )
            for _ in range(cmd["clients"])
        ]
        # Every connection opened (and the API's tunnels pooled) before the clock starts.
        warm = await asyncio.gather(*(c.get(cmd["path"]) for c in clients))
        bad = [r.status_code for r in warm if r.status_code != 200]
        if bad:
            raise RuntimeError(f"GET {cmd['path']}: {bad[:5]}")
        cpu = time.process_time()
        start = time.perf_counter()
        deadline = start + cmd["seconds"]
        errors: list[int] = []

        async def one(client: httpx.AsyncClient) -> int:
            done = 0
            while time.perf_counter() < deadline:
                response = await client.get(cmd["path"])
                if response.status_code != 200:
                    errors.append(response.status_code)
                done += 1
            return done

        counts = await asyncio.gather(*(one(c) for c in clients))
        elapsed = time.perf_counter() - start
    return {"requests": sum(counts), "seconds": elapsed, "errors": errors[:10],
            "error_count": len(errors), "client_cpu": time.process_time() - cpu}  # fmt: skip


def _blob(cmd: dict) -> dict:
    """One GET of cmd["bytes"], direct or after a CONNECT (cmd["connect"]); its wall time."""
    start = time.perf_counter()
    conn = RawHttp(cmd["host"], cmd["port"])
    try:
        if cmd.get("connect"):
            target = cmd["connect"]
            conn.sock.sendall(
                f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                f"Proxy-Authorization: {cmd['auth']}\r\n\r\n".encode()
            )
            status, _ = conn.head()
            if status != 200:
                raise RuntimeError(f"CONNECT {target}: {status}")
        status, size = conn.request(f"/v1/blob?bytes={cmd['bytes']}", cmd["headers"])
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    if status != 200 or size != cmd["bytes"]:
        raise RuntimeError(f"blob: {status}, {size} of {cmd['bytes']} bytes")
    return {"seconds": seconds}


def _watch(cmd: dict, say: Callable[[dict], None]) -> dict:
    """GET with a token until it is refused; says `ready` after the first 200.

    Returns when the first 401 arrived and when the last request answered 200 was sent
    (CLOCK_MONOTONIC, the same in every namespace).
    """
    conn = RawHttp(cmd["host"], cmd["port"])
    try:
        last_ok_sent, requests = 0.0, 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sent = time.monotonic()
            status, _ = conn.request(cmd["path"], cmd["headers"])
            requests += 1
            if status == 200:
                if not last_ok_sent:
                    say({"ready": True})
                last_ok_sent = sent
            elif status == 401:
                return {"refused_at": time.monotonic(), "last_ok_sent": last_ok_sent,
                        "requests": requests}  # fmt: skip
            else:
                raise RuntimeError(f"GET {cmd['path']}: {status}")
        raise RuntimeError("the revoked token was still accepted after 30 s")
    finally:
        conn.close()


def worker() -> None:
    """One JSON command a line on stdin, one JSON answer a line on stdout, until EOF."""

    def say(answer: dict) -> None:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()

    say({"up": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "latency":
                say(_latency(cmd))
            elif cmd["op"] == "load":
                say(asyncio.run(_load(cmd)))
            elif cmd["op"] == "blob":
                say(_blob(cmd))
            elif cmd["op"] == "watch":
                say(_watch(cmd, say))
            else:
                say({"error": f"unknown op {cmd['op']!r}"})
        except Exception as exc:  # the bench reports it and stops
            say({"error": f"{type(exc).__name__}: {exc}"})


class Worker:
    """A worker process inside a namespace, driven over its stdin and stdout."""

    def __init__(self, ns, name: str, log: Path) -> None:
        self.name = name
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(
            ns.exec_argv([sys.executable, str(Path(__file__).resolve()), "--worker"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )  # fmt: skip
        self.read()  # up

    def send(self, cmd: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited (log: {self._stderr.name})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name} worker: {answer['error']}")
        return answer

    def call(self, cmd: dict) -> dict:
        self.send(cmd)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # EOF: it ends
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


# -- the bench ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    times: tuple[float, ...]
    api_cpu_ms: float  # the API process's CPU per request (0 direct)

    @property
    def p50(self) -> float:
        return percentile(list(self.times), 50)

    @property
    def p99(self) -> float:
        return percentile(list(self.times), 99)


@dataclass(frozen=True)
class Load:
    rate: float  # requests/s
    client_cpu_ms: float  # the client's CPU per request
    api_cpu_ms: float  # the API process's CPU per request (0 direct)


@dataclass(frozen=True)
class Revocation:
    refused_after: float  # from the revoke call to the 401
    revoke_call: float  # how long Registry.revoke_token took
    stale_ok: float  # >0: a request sent this long after the commit still got 200
    requests: int


class Bench:
    def __init__(self, api_w: Worker, direct_w: Worker, api_pid: int, token: str, vpn: str,
                 args: argparse.Namespace, tunnel: dict) -> None:  # fmt: skip
        self.api_w, self.direct_w, self.api_pid, self.args = api_w, direct_w, api_pid, args
        self.tunnel = tunnel  # the gateway's tunnel service, for the hop-alone trials
        self.token, self.vpn = token, vpn
        self.api_get = {"Host": f"127.0.0.1:{API_PORT}", "Authorization": f"Bearer {token}"}
        self.direct_get = {"Host": f"{vpn}:{AGENT_PORT}"}
        self.proxy = f"/v1/devices/{DEVICE}/proxy"

    # 1. latency
    def latency(self, path: str, n: int) -> dict[str, Callable[[], Latency]]:
        """The API and direct trials of n GETs of path, for `alternate`."""
        return {
            "api": lambda: self.api_latency(self.proxy + path, n),
            "direct": lambda: self._latency(self.direct_w, self.vpn, AGENT_PORT, path,
                                            self.direct_get, n),
            # The gateway's hop alone: from the API's namespace through the tunnel service,
            # no API process in the way (where the API's time goes, against the whole path).
            "gateway": lambda: self._latency(self.api_w, self.tunnel["address"],
                                             TUNNEL_SERVICE_PORT, path, self.direct_get, n,
                                             tunnel=self.tunnel),
        }  # fmt: skip

    def api_latency(self, path: str, n: int) -> Latency:
        """n GETs of an API path, one at a time, and the API's CPU per request over them."""
        before = cpu_seconds(self.api_pid)
        times = self._latency(self.api_w, "127.0.0.1", API_PORT, path, self.api_get, n).times
        return Latency(times, (cpu_seconds(self.api_pid) - before) * 1000 / (n + 1))

    def _latency(self, w: Worker, host: str, port: int, path: str, headers: dict,
                 n: int, tunnel: dict | None = None) -> Latency:  # fmt: skip
        answer = w.call({"op": "latency", "host": host, "port": port, "path": path,
                         "headers": headers, "n": n, "tunnel": tunnel})  # fmt: skip
        return Latency(tuple(answer["times"]), 0.0)

    # 2. requests/s
    def load_api(self) -> Load:
        return self._load(self.api_w, f"http://127.0.0.1:{API_PORT}", self.proxy + SMALL,
                          {"Authorization": f"Bearer {self.token}"}, api=True)  # fmt: skip

    def load_direct(self) -> Load:
        return self._load(self.direct_w, f"http://{self.vpn}:{AGENT_PORT}", SMALL, {})

    def _load(self, w: Worker, base: str, path: str, headers: dict, api: bool = False) -> Load:
        before = cpu_seconds(self.api_pid)
        answer = w.call({"op": "load", "base": base, "path": path, "headers": headers,
                         "clients": CONCURRENCY, "seconds": self.args.seconds})  # fmt: skip
        api_cpu = cpu_seconds(self.api_pid) - before
        if answer["error_count"]:
            raise RuntimeError(f"{w.name}: {answer['error_count']} answers not 200, e.g. "
                               f"{answer['errors']}")  # fmt: skip
        n = answer["requests"]
        return Load(n / answer["seconds"], answer["client_cpu"] * 1000 / n,
                    api_cpu * 1000 / n if api else 0.0)  # fmt: skip

    # 3. a 100 MB transfer
    def blob_api(self) -> float:
        answer = self.api_w.call({
            "op": "blob", "host": "127.0.0.1", "port": CONNECT_PORT,
            "connect": f"{DEVICE}.{CUSTOMER}:{AGENT_PORT}", "auth": f"Bearer {self.token}",
            "headers": {"Host": f"{DEVICE}:{AGENT_PORT}", "Connection": "close"},
            "bytes": self.args.blob_mb * 1_000_000,
        })  # fmt: skip
        return self.args.blob_mb / answer["seconds"]

    def blob_direct(self) -> float:
        answer = self.direct_w.call({
            "op": "blob", "host": self.vpn, "port": AGENT_PORT,
            "headers": {"Host": f"{self.vpn}:{AGENT_PORT}", "Connection": "close"},
            "bytes": self.args.blob_mb * 1_000_000,
        })  # fmt: skip
        return self.args.blob_mb / answer["seconds"]

    # 4. revocation
    def revocation(self, api, registry, i: int) -> Revocation:
        from iotistic_vpn import tokens

        value = api.token(f"bench-revoke-{i}", CUSTOMER)
        token_id, _ = tokens.parse_token(value)
        headers = {**self.api_get, "Authorization": f"Bearer {value}"}
        self.api_w.send({"op": "watch", "host": "127.0.0.1", "port": API_PORT,
                         "path": self.proxy + SMALL, "headers": headers})  # fmt: skip
        self.api_w.read()  # ready: the token has been accepted, the client is polling
        time.sleep(0.02 + 0.01 * (i % 5))  # land the revocation at varying points of a request
        started = time.monotonic()
        registry.revoke_token(token_id, actor="bench")
        committed = time.monotonic()
        answer = self.api_w.read()
        stale = max(0.0, answer["last_ok_sent"] - committed)
        return Revocation(answer["refused_at"] - started, committed - started, stale,
                          answer["requests"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs (at least 5)")
    parser.add_argument("--requests", type=int, default=400, help="GETs per latency trial")
    parser.add_argument("--ping-requests", type=int, default=60,
                        help="GETs of /ping per trial (some 40 ms each, see SMALL)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a load trial")
    parser.add_argument("--blob-mb", type=int, default=100, help="MB per transfer trial")
    parser.add_argument("--revocations", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run the API under cProfile, its stats to FILE")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    if os.geteuid() != 0:
        sys.exit("bench_api needs root (network namespaces)")

    from iotistic_vpn.registry import Registry
    from tests.support.api_harness import start_api
    from tests.support.gateway_harness import AGENT_ENV, UP, Gateway, eventually, make_fleet
    from tests.support.netns import Underlay
    from tests.support.postgres import throwaway_cluster

    if args.profile:
        AGENT_ENV["IOTISTIC_API_PROFILE"] = str(args.profile.resolve())
    began = time.perf_counter()
    load_before = os.getloadavg()
    WORK_ROOT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-api-", dir=WORK_ROOT))
    work.chmod(0o755)
    try:
        with throwaway_cluster() as pg, contextlib.ExitStack() as stack:
            print("setting up: registry, certificates, gateway (2 instances + agent), device "
                  "dev-a, API", flush=True)  # fmt: skip
            with pg.connect() as conn:
                conn.execute('CREATE DATABASE "bench"')
            dsn = pg.dsn_for("bench")
            with Registry(dsn) as reg:
                reg.migrate()
            fleet = make_fleet(work / "fleet")
            gw_dir = work / "gw"
            gw_dir.mkdir(mode=0o755)
            ul = stack.enter_context(Underlay(gw_dir))
            gw = Gateway(fleet, ul, gw_dir, dsn, pg, 60)
            stack.callback(gw.close)
            device = gw.device(DEVICE, 0)
            device.client.wait_for(UP, timeout=30)
            eventually(lambda: gw.db(DEVICE) == (True, "gw-1", "active"), f"{DEVICE} online", 20)
            vpn = gw.registry.find_device(DEVICE).vpn_address
            api = start_api(gw, pg, read_timeout=30, port=API_PORT,
                            connect_listen=f"127.0.0.1:{CONNECT_PORT}")  # fmt: skip
            token = api.token("bench", CUSTOMER)
            api_w = Worker(gw.api_ns, "API", work / "worker-api.log")
            stack.callback(api_w.close)
            direct_w = Worker(gw.ns, "direct", work / "worker-direct.log")
            stack.callback(direct_w.close)
            tunnel = {"address": str(gw.ns.address), "gateway": "gw-1", "ca": str(fleet.chain),
                      "cert": fleet.api.cert_path, "key": fleet.api.key_path,
                      "target": f"{DEVICE}:{AGENT_PORT}"}  # fmt: skip
            bench = Bench(api_w, direct_w, api.process.pid, token, vpn, args, tunnel)
            print(f"  up in {time.perf_counter() - began:.0f}s; device {DEVICE} at {vpn}",
                  flush=True)  # fmt: skip

            phase = time.perf_counter()
            trials = bench.latency(SMALL, args.requests)
            # Where the API's time goes: the same client, the API alone (no device leg).
            trials["healthz"] = lambda: bench.api_latency("/healthz", args.requests // 2)
            trials["device"] = lambda: bench.api_latency(f"/v1/devices/{DEVICE}",
                                                             args.requests // 2)  # fmt: skip
            latency = alternate(trials, args.pairs)
            ping = alternate(bench.latency(PING, args.ping_requests), args.pairs)
            print(f"  1. latency: {args.pairs} pairs of {args.requests} GETs of {SMALL} and of "
                  f"{args.ping_requests} of {PING} in {time.perf_counter() - phase:.0f}s",
                  flush=True)  # fmt: skip
            phase = time.perf_counter()
            load = alternate({"api": bench.load_api, "direct": bench.load_direct}, args.pairs)
            print(f"  2. {CONCURRENCY} clients: {args.pairs} pairs of {args.seconds:.0f}s in "
                  f"{time.perf_counter() - phase:.0f}s", flush=True)  # fmt: skip
            phase = time.perf_counter()
            blob = alternate({"api": bench.blob_api, "direct": bench.blob_direct}, args.pairs)
            print(f"  3. transfer: {args.pairs} pairs of {args.blob_mb} MB in "
                  f"{time.perf_counter() - phase:.0f}s", flush=True)  # fmt: skip
            phase = time.perf_counter()
            with Registry(dsn) as registry:
                revocations = [bench.revocation(api, registry, i)
                               for i in range(args.revocations)]  # fmt: skip
            print(f"  4. revocation: {args.revocations} trials in "
                  f"{time.perf_counter() - phase:.0f}s", flush=True)  # fmt: skip
            if args.profile:
                # SIGINT: uvicorn re-raises it once shut down, and a KeyboardInterrupt lets
                # cProfile write (a re-raised SIGTERM would end the process first)
                api.process.signal(signal.SIGINT)
                api.process.wait_exit(15)
            with contextlib.suppress(OSError):
                shutil.copy(gw_dir / "api.log", work / "api.log")
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(args, latency, ping, load, blob, revocations)
    if args.profile:
        import pstats

        print(f"\nthe API under cProfile (its figures above include the profiler): {args.profile}")
        pstats.Stats(str(args.profile.resolve())).sort_stats("tottime").print_stats(25)
    load_after = os.getloadavg()
    print()
    print(f"{time.perf_counter() - began:.0f}s in all on {os.cpu_count()} CPUs; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min), "
          f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")  # fmt: skip


def report(args, latency: dict, ping: dict, load: dict, blob: dict,
           revocations: list[Revocation]) -> None:  # fmt: skip
    api_lat: list[Latency] = latency["api"]
    direct_lat: list[Latency] = latency["direct"]

    def ms(value: float) -> str:
        return f"{value * 1000:.2f} ms"

    def pooled(trials: list[Latency], q: int) -> float:
        return percentile([t for trial in trials for t in trial.times], q)

    def row(label: str, *values: str) -> None:
        print(f"  {label:46}" + "".join(f"{v:>14}" for v in values))

    print()
    print("Cloud API benchmark: API (client in the api namespace: 127.0.0.1 -> API -> gateway "
          "tunnel -> VPN)")  # fmt: skip
    print("  vs direct (client in the gateway namespace -> VPN_IP:48484); medians over "
          f"{args.pairs} interleaved trials, one warm-up pair dropped")  # fmt: skip
    row("", "API", "direct")
    for path, trials, n in ((SMALL, latency, args.requests), (PING, ping, args.ping_requests)):
        api_t: list[Latency] = trials["api"]
        direct_t: list[Latency] = trials["direct"]
        for q in (50, 99):
            row(f"GET {path} p{q} ({n}/trial, keep-alive)",
                ms(statistics.median(percentile(list(t.times), q) for t in api_t)),
                ms(statistics.median(percentile(list(t.times), q) for t in direct_t)))  # fmt: skip
        row("  all trials pooled: p50 / p99 ms",
            f"{pooled(api_t, 50) * 1000:.2f}/{pooled(api_t, 99) * 1000:.2f}",
            f"{pooled(direct_t, 50) * 1000:.2f}/{pooled(direct_t, 99) * 1000:.2f}")  # fmt: skip
        if "gateway" in trials:
            hop: list[Latency] = trials["gateway"]
            row("  the gateway's hop alone (tunnel service) p50 / p99",
                f"{statistics.median(t.p50 for t in hop) * 1000:.2f}/"
                f"{statistics.median(t.p99 for t in hop) * 1000:.2f}", "-")  # fmt: skip
        if path == SMALL:
            row("  API process CPU per request",
                f"{statistics.median(t.api_cpu_ms for t in api_t):.2f} ms", "-")  # fmt: skip
            for name, label in (("device", f"GET /v1/devices/{DEVICE} (API only)"),
                                ("healthz", "GET /healthz (API only, no token)")):  # fmt: skip
                alone: list[Latency] = trials[name]
                row(f"  {label} p50, CPU",
                    ms(statistics.median(t.p50 for t in alone)),
                    f"{statistics.median(t.api_cpu_ms for t in alone):.2f} ms CPU")  # fmt: skip
    api_load: list[Load] = load["api"]
    direct_load: list[Load] = load["direct"]
    row(f"requests/s, {CONCURRENCY} concurrent httpx clients, {SMALL}",
        f"{statistics.median(x.rate for x in api_load):,.0f}",
        f"{statistics.median(x.rate for x in direct_load):,.0f}")  # fmt: skip
    row("  client CPU per request",
        f"{statistics.median(x.client_cpu_ms for x in api_load):.2f} ms",
        f"{statistics.median(x.client_cpu_ms for x in direct_load):.2f} ms")  # fmt: skip
    row("  API process CPU per request",
        f"{statistics.median(x.api_cpu_ms for x in api_load):.2f} ms", "-")  # fmt: skip
    row(f"{args.blob_mb} MB GET /v1/blob (CONNECT vs direct)",
        f"{statistics.median(blob['api']):.1f} MB/s",
        f"{statistics.median(blob['direct']):.1f} MB/s")  # fmt: skip

    print()
    width = 44

    def slower(name: str, subject: list[float], anchor: list[float], goal: float | None) -> None:
        """subject / anchor times per pair: how many times as long the subject takes."""
        pairs = [s / a for s, a in zip(subject, anchor, strict=True)]
        Ratio.of(name, subject, anchor, higher_is_better=False)  # checks pairs and values
        med = statistics.median(pairs)
        verdict = "" if goal is None else (
            f"; goal <= {goal:g}x: {'met' if med <= goal else 'not met'}")  # fmt: skip
        print(f"{name + ':':<{width}} median {med:.2f}x (min {min(pairs):.2f}x, max "
              f"{max(pairs):.2f}x, {len(pairs)} pairs){verdict}")  # fmt: skip

    slower("latency API / direct, p50", [t.p50 for t in api_lat], [t.p50 for t in direct_lat],
           1.5)  # fmt: skip
    slower("latency API / direct, p99", [t.p99 for t in api_lat], [t.p99 for t in direct_lat],
           2.0)  # fmt: skip
    hop = latency["gateway"]
    # Where the time goes: the gateway's mutual-TLS hop with no API in the way, against direct
    # (the floor of any API behind it), and the whole path against that hop.
    slower("  the gateway's hop alone / direct, p50", [t.p50 for t in hop],
           [t.p50 for t in direct_lat], None)  # fmt: skip
    slower("  API / the gateway's hop alone, p50", [t.p50 for t in api_lat],
           [t.p50 for t in hop], None)  # fmt: skip
    api_p, direct_p = ping["api"], ping["direct"]
    slower(f"  {PING} (Nagle-bound both ways), p50", [t.p50 for t in api_p],
           [t.p50 for t in direct_p], 1.5)  # fmt: skip
    slower(f"  {PING} (Nagle-bound both ways), p99", [t.p99 for t in api_p],
           [t.p99 for t in direct_p], 2.0)  # fmt: skip
    Ratio.of(f"requests/s API / direct, {CONCURRENCY} clients", [x.rate for x in api_load],
             [x.rate for x in direct_load]).row(width)  # fmt: skip
    print(f"  the API's CPU per proxied request: "
          f"{statistics.median(t.api_cpu_ms for t in api_lat):.2f} ms one at a time, "
          f"{statistics.median(x.api_cpu_ms for x in api_load):.2f} ms with {CONCURRENCY} "
          f"concurrent clients")  # fmt: skip
    Ratio.of("transfer API CONNECT / direct, MB/s", blob["api"], blob["direct"],
             goal=0.8).row(width)  # fmt: skip

    after = [r.refused_after for r in revocations]
    print()
    print(f"Token revoked -> next request refused (401), {len(after)} trials, from the "
          f"Registry.revoke_token call:")  # fmt: skip
    print(f"  min {ms(min(after))}, median {ms(statistics.median(after))}, p90 "
          f"{ms(percentile(after, 90))}, p99 {ms(percentile(after, 99))}, max {ms(max(after))}; "
          f"goal p99 < 1 s: {'met' if percentile(after, 99) < 1 else 'not met'}")  # fmt: skip
    calls = [r.revoke_call for r in revocations]
    print(f"  (the revoke call itself: median {ms(statistics.median(calls))}; requests per "
          f"trial: median {statistics.median(r.requests for r in revocations):.0f})")  # fmt: skip
    stale = [r.stale_ok for r in revocations if r.stale_ok > 0]
    if stale:
        print(f"  {len(stale)} trials answered 200 to a request sent after the revocation had "
              f"committed (up to {ms(max(stale))} after)")  # fmt: skip


if __name__ == "__main__":
    main()

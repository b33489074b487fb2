"""Throwaway network namespaces on a private bridge, with OpenVPN and other processes in them.

A `Underlay` owns one namespace holding a bridge; every member namespace (a gateway, a device)
gets a veth pair whose bridge end lives in the underlay namespace and whose `eth0` end lives in
the member, addressed from 198.18.0.0/24 (RFC 2544 benchmarking space). Nothing is created in
the host's namespace, so traffic cannot leave the machine and deleting the namespaces removes
every link, address and tun device at once.

Names carry the creating process id (`iotistic-t<pid>-<token>-<role>`): each run's names are
unique, and `sweep_stale()` deletes namespaces whose creator is gone (a run that was killed).
Every wait is bounded; `Underlay.close()` stops every process it started, then deletes its
namespaces, and it runs even when a test fails (use it as a context manager).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NETNS_PREFIX",
    "Namespace",
    "Process",
    "Underlay",
    "openvpn_client_config",
    "openvpn_gateway_config",
    "sweep_stale",
    "wait_until",
]

NETNS_PREFIX = "iotistic-t"
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
_NAME_RE = re.compile(rf"{NETNS_PREFIX}(\d+)-")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def sweep_stale() -> list[str]:
    """Delete namespaces of earlier runs whose process is gone; return their names."""
    removed = []
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _NAME_RE.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


def wait_until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    """Poll check() until it returns something truthy; raise AssertionError naming what."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Process:
    """One process started inside a namespace, its output in a log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        self._handle = log.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own group: stop() ends the children too
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 10.0, *, start: int = 0) -> str:
        """Return the first log line (from byte offset start) matching pattern, or fail."""
        regex = re.compile(pattern)

        def found() -> str | None:
            text = self.log.read_bytes()[start:].decode(errors="replace")
            for line in text.splitlines():
                if regex.search(line):
                    return line
            if not self.running():
                raise AssertionError(
                    f"{self.log.name}: process exited ({self.proc.returncode}) before "
                    f"{pattern!r}:\n{self.text()[-4000:]}"
                )
            return None

        try:
            return str(wait_until(found, timeout, f"{pattern!r} in {self.log.name}"))
        except AssertionError as exc:
            if "timed out" in str(exc):
                raise AssertionError(f"{exc}:\n{self.text()[-4000:]}") from None
            raise

    def mark(self) -> int:
        """The log's current size: pass it as wait_for(start=) to look only at what follows."""
        return self.log.stat().st_size

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end on its own; fail with its log if it does not."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.log.name}: still running after {timeout}s:\n{self.text()[-4000:]}"
            ) from None

    def signal(self, sig: int) -> None:
        if self.running():
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM to the process group (without waiting)."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL after timeout; always closes the log."""
        try:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        finally:
            self._handle.close()


@dataclass
class Namespace:
    """A member namespace: loopback up and eth0 on the underlay bridge."""

    name: str
    address: ipaddress.IPv4Address | None
    underlay: Underlay = field(repr=False)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 15.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and return its output."""
        proc = subprocess.run(
            self.exec_argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {self.name} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def start(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Process:
        """Start a long-running process inside the namespace; the underlay stops it at close."""
        proc = Process(self.exec_argv(argv), log, env)
        self.underlay.processes.append(proc)
        return proc

    def routes(self) -> str:
        return _ip("-n", self.name, "-4", "route", "show").stdout


class Underlay:
    """A bridge in its own namespace and the member namespaces plugged into it."""

    def __init__(self, workdir: Path, network: ipaddress.IPv4Network = UNDERLAY) -> None:
        """network: the member addresses (a /24 by default; a bigger one for a bench's fleet,
        at most the 1,024 ports a Linux bridge takes)."""
        self.workdir = workdir
        self.network = network
        self.run_id = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        self.namespaces: list[str] = []
        self.processes: list[Process] = []
        self._hosts = iter(network.hosts())
        self._links = 0
        sweep_stale()
        self.bridge_ns = self._add_netns("ul")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def __enter__(self) -> Underlay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_netns(self, role: str) -> str:
        name = f"{self.run_id}-{role}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def namespace(self, role: str, *, plugged: bool = True) -> Namespace:
        """A new member namespace; plugged ones get eth0 with the network's next address."""
        name = self._add_netns(role)
        if not plugged:
            return Namespace(name, None, self)
        self._links += 1
        port = f"p{self._links}"
        address = next(self._hosts)
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", name)  # fmt: skip
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        _ip("-n", name, "addr", "add", f"{address}/{self.network.prefixlen}", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        return Namespace(name, address, self)

    def close(self) -> None:
        """Stop every process (all signalled first: they wind down together), then delete
        every namespace."""
        errors = []
        for proc in self.processes:
            proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(exc)
        self.processes.clear()
        for name in reversed(self.namespaces):
            _ip("netns", "delete", name, check=False)
        self.namespaces.clear()
        if errors:
            raise errors[0]


def openvpn_gateway_config(
    index: int,
    *,
    pki_dir: Path,
    crl_dir: Path,
    management: Path,
    status: Path,
    port: int | None = None,
    client_auth: bool = True,
    user: str | None = "nobody",
    group: str | None = "nogroup",
    verify: str | None = None,
    hold: bool = False,
) -> str:
    """One gateway instance's config, as the openvpn_gateway role writes it.

    pki_dir holds ca.pem, server.crt, server.key and tls-crypt-v2.key (the names on the hosts).
    client_auth=False leaves out management-client-auth: plain certificate auth, for the
    benchmark's baseline. verify: the tls-crypt-v2-verify command (tlsverify.sh), as the role
    runs it. hold: management-hold, as the role writes it: the instance starts (logs
    "Initialization Sequence Completed") only once its management client sends `hold release`.
    """
    lines = [
        "mode server",
        "tls-server",
        f"dev tun{index}",
        "dev-type tun",
        "proto udp",
        f"port {port if port is not None else 11940 + index}",
        "topology subnet",
        f"ifconfig 100.127.255.{index + 1} 255.192.0.0",
        'push "topology subnet"',
        "allow-compression no",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
        "tls-version-min 1.2",
        f"ca {pki_dir / 'ca.pem'}",
        f"cert {pki_dir / 'server.crt'}",
        f"key {pki_dir / 'server.key'}",
        "dh none",
        f"tls-crypt-v2 {pki_dir / 'tls-crypt-v2.key'}",
        "remote-cert-tls client",
        f"crl-verify {crl_dir} dir",
        f"management {management} unix",
        "keepalive 10 60",
        "hand-window 30",
        "max-clients 4000",
        "persist-key",
        "persist-tun",
        f"status {status} 10",
        "verb 3",
    ]
    if client_auth:
        lines += ["management-client-auth", "auth-user-pass-optional"]
    if hold:
        lines += ["management-hold"]
    else:
        # Without the agent nobody pushes an address: hand them out from a pool.
        lines += ["ifconfig-pool 100.64.0.2 100.64.255.254 255.192.0.0"]
    if verify:
        lines += ["script-security 2", f'tls-crypt-v2-verify "{verify}"']
    if user:
        lines += [f"user {user}"]
    if group:
        lines += [f"group {group}"]
    return "\n".join(lines) + "\n"


def openvpn_client_config(
    remote: str, ports: Sequence[int], *, ca: Path, cert: Path, key: Path, tls_crypt: Path,
    extra: Sequence[str] = (),
) -> str:  # fmt: skip
    """A device's client config, as the openvpn_device role writes it (with short retries)."""
    lines = [
        "client",
        "dev tun",
        "proto udp",
        *(f"remote {remote} {port}" for port in ports),
        "nobind",
        f"ca {ca}",
        f"cert {cert}",
        f"key {key}",
        f"tls-crypt-v2 {tls_crypt}",
        "remote-cert-tls server",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
        "allow-compression no",
        "explicit-exit-notify 1",  # UDP: tell the gateway at once when the device stops
        "connect-retry 1 2",
        "server-poll-timeout 5",
        "verb 3",
        *extra,
    ]
    return "\n".join(lines) + "\n"

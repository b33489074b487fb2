"""Real OpenVPN 2.6 handshakes against certificates and tls-crypt-v2 keys made by iotistic_vpn.

The gateway runs in server mode (as in production: the tls-crypt-v2 HMAC-cookie handshake
exists only there), which needs a tun device, so each test runs a gateway and a device inside
a throwaway network namespace: traffic stays on that namespace's loopback, and deleting the
namespace removes every tun device. Waits are bounded and processes are killed in finally.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from iotistic_vpn import pki, remote_guard, tlsverify
from iotistic_vpn.pki import tlscrypt

pytestmark = [
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

NETNS_PREFIX = "iotistic-pki-"
PORT = 1194  # the namespace has its own loopback: no clash with anything on the host
WAIT = 8.0  # seconds; a handshake on loopback takes well under one


@dataclass
class Fleet:
    root: Path
    chain: Path
    crl: Path
    crl_dir: Path
    tc_server: Path

    def device(self, name: str) -> tuple[Path, Path, Path]:
        base = self.root / "devices" / "acme"
        return base / f"{name}.crt", base / f"{name}.key", base / f"{name}.tc"


def _csr_from_device(key_path: Path) -> bytes:
    """What the device does on its own: make a key and a CSR; only the CSR leaves it."""
    key = pki.generate_key()
    pki.write_private_key(key_path, key)
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")])
    )
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    root = tmp_path_factory.mktemp("fleet")
    fleet = Fleet(
        root, root / "ca" / pki.CA_CHAIN, root / "crl.pem", root / "crl.d",
        root / "gateway" / "tc-server.key",
    )  # fmt: skip
    ca = pki.ensure_ca(pki.CaFiles.at(root / "ca")).ca
    pki.ensure_gateway_cert(ca, "gw-1", root / "gateway")
    fleet.tc_server.write_bytes(tlscrypt.generate_server_key())
    requests = []
    for name in ("dev-1", "dev-2"):
        _, key, tc = fleet.device(name)
        key.parent.mkdir(parents=True, exist_ok=True)
        requests.append(pki.DeviceRequest("acme", name, _csr_from_device(key)))
        tc.write_bytes(tlscrypt.generate_client_key(fleet.tc_server.read_bytes()))
    issued = {r.device: r for r in pki.ensure_device_certs(ca, requests, root / "devices")}
    revoked = pki.Revocation(int(issued["dev-2"].serial), reason="key_compromise")
    pki.ensure_crl(ca, fleet.crl, [revoked], crl_dir=fleet.crl_dir)
    return fleet


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@pytest.fixture
def netns():
    """A fresh namespace with loopback up; stale ones from killed runs are removed first."""
    for name in _ip("netns", "list").stdout.split():
        pid = name.removeprefix(NETNS_PREFIX)
        if name.startswith(NETNS_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "delete", name, check=False)
    name = f"{NETNS_PREFIX}{os.getpid()}"
    _ip("netns", "delete", name, check=False)
    if _ip("netns", "add", name, check=False).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "delete", name, check=False)


class OpenVPN:
    """One openvpn process inside the namespace, its log in a file."""

    def __init__(self, netns: str, log: Path, args: list[str]) -> None:
        self.log = log
        self._handle = log.open("w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "openvpn", "--verb", "3", *args],
            stdout=self._handle, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = WAIT) -> str:
        """Return the first log line matching pattern; fail after timeout with the log."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in self.text().splitlines():
                if regex.search(line):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} in {self.log.name} within {timeout}s:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        self._handle.close()


def gateway_args(fleet: Fleet, cert: Path, key: Path, crl: list[str]) -> list[str]:
    return [
        "--mode", "server", "--tls-server", "--dev", "tun", "--topology", "subnet",
        "--ifconfig", "100.64.0.1", "255.255.255.0",
        "--ifconfig-pool", "100.64.0.10", "100.64.0.100", "--push", "topology subnet",
        "--proto", "udp4", "--local", "127.0.0.1", "--lport", str(PORT),
        "--ca", str(fleet.chain), "--cert", str(cert), "--key", str(key), "--dh", "none",
        "--remote-cert-tls", "client", *crl,
        "--tls-crypt-v2", str(fleet.tc_server),
    ]  # fmt: skip


def device_args(fleet: Fleet, name: str, tc: Path | None = None) -> list[str]:
    cert, key, own_tc = fleet.device(name)
    return [
        "--client", "--dev", "tun", "--proto", "udp4", "--remote", "127.0.0.1", str(PORT),
        "--nobind", "--ca", str(fleet.chain), "--cert", str(cert), "--key", str(key),
        "--remote-cert-tls", "server", "--tls-crypt-v2", str(tc or own_tc),
    ]  # fmt: skip


@contextlib.contextmanager
def gateway_and_device(netns: str, tmp_path: Path, server: list[str], client: list[str]):
    started: list[OpenVPN] = []
    try:
        gateway = OpenVPN(netns, tmp_path / "gateway.log", server)
        started.append(gateway)
        gateway.wait_for("Initialization Sequence Completed")
        device = OpenVPN(netns, tmp_path / "device.log", client)
        started.append(device)
        yield gateway, device
    finally:
        for proc in started:
            proc.stop()


def gateway_cert(fleet: Fleet) -> tuple[Path, Path]:
    return fleet.root / "gateway" / "gw-1.crt", fleet.root / "gateway" / "gw-1.key"


def test_device_connects_and_gets_an_address(fleet, netns, tmp_path):
    server = gateway_args(fleet, *gateway_cert(fleet), ["--crl-verify", str(fleet.crl)])
    with gateway_and_device(netns, tmp_path, server, device_args(fleet, "dev-1")) as (gw, dev):
        dev.wait_for("Initialization Sequence Completed")
        assert "Control Channel: using tls-crypt-v2 key" in gw.text()
        gw.wait_for(r"\[dev-1\] Peer Connection Initiated")
        assert "VERIFY EKU OK" in dev.text() and "CN=gw-1" in dev.text()
        addresses = _ip("-n", netns, "-4", "-o", "addr", "show").stdout
        assert re.search(r"inet 100\.64\.0\.(1\d|[2-9]\d|100)/24", addresses), addresses


@pytest.mark.parametrize("mode", ["file", "dir"])
def test_revoked_device_is_refused(fleet, netns, tmp_path, mode):
    crl = ["--crl-verify", str(fleet.crl)]
    if mode == "dir":
        crl = ["--crl-verify", str(fleet.crl_dir), "dir"]
    server = gateway_args(fleet, *gateway_cert(fleet), crl)
    with gateway_and_device(netns, tmp_path, server, device_args(fleet, "dev-2")) as (gw, dev):
        refusal = {
            "file": r"VERIFY ERROR: depth=0, error=certificate revoked: O=acme, CN=dev-2",
            "dir": r"VERIFY CRL: depth=0, O=acme, CN=dev-2, serial=\d+ is revoked",
        }[mode]
        gw.wait_for(refusal)
        assert "Initialization Sequence Completed" not in dev.text()
        assert "[dev-2] Peer Connection Initiated" not in gw.text()


def test_device_certificate_cannot_pose_as_a_gateway(fleet, netns, tmp_path):
    cert, key, _ = fleet.device("dev-1")
    server = gateway_args(fleet, cert, key, ["--crl-verify", str(fleet.crl)])
    with gateway_and_device(netns, tmp_path, server, device_args(fleet, "dev-1")) as (_, dev):
        dev.wait_for(r"VERIFY ERROR: depth=0, error=unsuitable certificate purpose: O=acme")
        assert "Initialization Sequence Completed" not in dev.text()


def test_tls_crypt_v2_key_of_another_fleet_is_dropped_before_tls(fleet, netns, tmp_path):
    stranger = tmp_path / "stranger.tc"
    stranger.write_bytes(tlscrypt.generate_client_key(tlscrypt.generate_server_key()))
    server = gateway_args(fleet, *gateway_cert(fleet), ["--crl-verify", str(fleet.crl)])
    client = device_args(fleet, "dev-1", tc=stranger)
    with gateway_and_device(netns, tmp_path, server, client) as (gw, _):
        gw.wait_for("can not extract tls-crypt-v2 client key")
        assert "VERIFY" not in gw.text()  # no certificate was ever looked at


@pytest.fixture(scope="module")
def verify(fleet) -> tuple[str, dict[str, Path]]:
    """The gateway's tls-crypt-v2-verify command as openvpn_gateway installs it, with dev-2's
    device revoked, and client keys: dev-1's and dev-2's naming their device, one whose USER
    metadata names no device."""
    lib = fleet.root / "tlsverify"
    lib.mkdir()
    shutil.copy(Path(tlsverify.__file__).with_suffix(".sh"), lib)
    revoked = fleet.root / "revoked-devices.d"
    revoked.mkdir()
    (revoked / "dev-2").touch()
    server_key = fleet.tc_server.read_bytes()
    keys = {}
    for label, metadata in [
        ("dev-1", tlsverify.identity("acme", "dev-1")),
        ("dev-2", tlsverify.identity("acme", "dev-2")),
        ("garbage", b"urn:iotistic:acme:dev-1;rm -rf /"),
    ]:
        keys[label] = fleet.root / f"{label}.identity.tc"
        keys[label].write_bytes(tlscrypt.generate_client_key(server_key, metadata))
    command = f"/bin/sh {lib / 'tlsverify.sh'} {revoked}"
    return command, keys


def verifying_gateway(fleet: Fleet, command: str) -> list[str]:
    server = gateway_args(fleet, *gateway_cert(fleet), ["--crl-verify", str(fleet.crl_dir), "dir"])
    return [*server, "--script-security", "2", "--tls-crypt-v2-verify", command]


def test_a_key_naming_a_good_device_passes_tls_crypt_v2_verify(fleet, netns, tmp_path, verify):
    command, keys = verify
    client = device_args(fleet, "dev-1", tc=keys["dev-1"])
    with gateway_and_device(netns, tmp_path, verifying_gateway(fleet, command), client) as (
        gw,
        dev,
    ):
        dev.wait_for("Initialization Sequence Completed")
        assert "TLS CRYPT V2 VERIFY SCRIPT OK" in gw.text()


@pytest.mark.parametrize(
    ("device", "key", "why"),
    [
        # dev-2's certificate is revoked too: the refusal comes before crl-verify ever runs.
        ("dev-2", "dev-2", "device acme/dev-2 is revoked"),
        ("dev-1", "garbage", "is not urn:iotistic:<customer>:<device>"),
        ("dev-1", None, "a TIMESTAMP key names no device"),  # the fixture's timestamp key
    ],
)
def test_tls_crypt_v2_verify_drops_a_key_before_tls(
    fleet, netns, tmp_path, verify, device, key, why
):
    command, keys = verify
    client = device_args(fleet, device, tc=keys.get(key))
    with gateway_and_device(netns, tmp_path, verifying_gateway(fleet, command), client) as (
        gw,
        dev,
    ):
        gw.wait_for(f"tls-crypt-v2-verify: refused: .*{re.escape(why)}")
        gw.wait_for("TLS CRYPT V2 VERIFY SCRIPT ERROR")
        time.sleep(2)  # the device's retransmits of its first packets: refused again, no TLS
        assert "VERIFY" not in gw.text().replace("TLS CRYPT V2 VERIFY SCRIPT ERROR", "")
        assert "Peer Connection Initiated" not in gw.text()
        assert "Initialization Sequence Completed" not in dev.text()


# Failover to the next remote: two gateways on the namespace's loopback, the device listing
# both (in order, no remote-random), pings every second. The first gateway is frozen (SIGSTOP:
# it neither answers nor refuses, as a host that died), so the device notices by ping-restart.
PING_RESTART_S = 3  # server-poll-timeout 2 (less, as the role has: 4 and 30)
SECOND_PORT = PORT + 1
DIALS = re.compile(r"link remote: \[AF_INET\]127\.0\.0\.1:(\d+)")


def second_gateway_args(fleet: Fleet) -> list[str]:
    """The same gateway on the next port with a pool of its own (its tun device beside the
    first one's in the namespace)."""
    args = gateway_args(fleet, *gateway_cert(fleet), ["--crl-verify", str(fleet.crl)])
    swap = {"100.64.0.1": "100.64.1.1", "100.64.0.10": "100.64.1.10",
            "100.64.0.100": "100.64.1.100", str(PORT): str(SECOND_PORT)}  # fmt: skip
    return [swap.get(a, a) for a in args]


def failing_over(
    fleet: Fleet, netns: str, tmp_path: Path, guard: bool, second_slow: bool = False
) -> tuple[str, str]:
    """The device connected to the first gateway, which then froze; once the device is back
    (on either), (its log from the ping-restart on, the guard's log). second_slow: the second
    gateway froze too, until the device gave it up (server-poll-timeout), as a survivor busy
    with a fleet's handshakes may answer too late."""
    sock = tmp_path / "management.sock"
    client = device_args(fleet, "dev-1")
    client += ["--remote", "127.0.0.1", str(SECOND_PORT), "--ping", "1",
               "--ping-restart", str(PING_RESTART_S), "--server-poll-timeout", "2"]  # fmt: skip
    if guard:
        client += ["--management", str(sock), "unix"]
    first = gateway_args(fleet, *gateway_cert(fleet), ["--crl-verify", str(fleet.crl)])
    second_log = tmp_path / "gateway-2.log"
    second = OpenVPN(netns, second_log, [*second_gateway_args(fleet), "--ping", "1"])
    guard_log = tmp_path / "guard.log"
    with contextlib.ExitStack() as stack:
        stack.callback(second.stop)
        if guard:
            handle = stack.enter_context(guard_log.open("w"))
            guarding = subprocess.Popen(
                ["python3", "-I", remote_guard.__file__, str(sock)],
                stdout=handle, stderr=subprocess.STDOUT,
            )  # fmt: skip
            stack.callback(guarding.wait, 5)
            stack.callback(guarding.terminate)
        second.wait_for("Initialization Sequence Completed")
        gw, dev = stack.enter_context(
            gateway_and_device(netns, tmp_path, [*first, "--ping", "1"], client)
        )
        stack.callback(gw.proc.send_signal, signal.SIGCONT)  # before gateway_and_device stops it
        dev.wait_for("Initialization Sequence Completed")
        assert DIALS.findall(dev.text()) == [str(PORT)], dev.text()
        gw.proc.send_signal(signal.SIGSTOP)
        if second_slow:
            second.proc.send_signal(signal.SIGSTOP)
            stack.callback(second.proc.send_signal, signal.SIGCONT)
        dev.wait_for(r"Inactivity timeout \(--ping-restart\)", timeout=PING_RESTART_S + WAIT)
        after = lambda: dev.text().split("Inactivity timeout (--ping-restart)", 1)[1]  # noqa: E731
        if second_slow:
            # It gives the second up (server-poll-timeout 2 s or ping-restart 3 s, whichever
            # OpenVPN's one-second timers fire first) and dials the first again.
            deadline = time.monotonic() + WAIT
            while DIALS.findall(after()).count(str(PORT)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            second.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + WAIT + 4
        while "Initialization Sequence Completed" not in after() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Initialization Sequence Completed" in after(), dev.text()
        return after(), guard_log.read_text() if guard else ""


def _on_the_dead_gateway(after: str) -> str:
    """What the device logged from its redial of the dead gateway to its dial of the next."""
    return after.split(f":{PORT}\n", 1)[1].split(f"link remote: [AF_INET]127.0.0.1:{SECOND_PORT}")[
        0
    ]


def test_after_a_ping_restart_openvpn_dials_the_dead_gateway_first(fleet, netns, tmp_path):
    """What the remote guard is for: OpenVPN alone keeps the remote of a completed connection,
    so it dials the gateway it just found dead and waits there until a timer gives it up
    (server-poll-timeout, or the ping-restart again, whichever fires first)."""
    after, _ = failing_over(fleet, netns, tmp_path, guard=False)
    assert DIALS.findall(after) == [str(PORT), str(SECOND_PORT)], after
    waited = _on_the_dead_gateway(after)
    assert "Server poll timeout" in waited or "Inactivity timeout" in waited, after


def test_the_remote_guard_gives_up_the_dead_gateways_redial_at_once(fleet, netns, tmp_path):
    """With roles/openvpn_device's remote guard the redial of the gateway found dead is given
    up as it starts (a restart from the management socket), and the next gateway dialled."""
    after, guard_log = failing_over(fleet, netns, tmp_path, guard=True)
    assert DIALS.findall(after) == [str(PORT), str(SECOND_PORT)], after
    given_up = _on_the_dead_gateway(after)
    assert "MANAGEMENT: CMD 'signal SIGUSR1'" in given_up, after
    assert "Server poll timeout" not in given_up and "Inactivity timeout" not in given_up, after
    assert f"127.0.0.1:{PORT} did not answer pings" in guard_log, guard_log


def test_the_remote_guard_gives_up_the_dead_gateway_whenever_it_is_dialled_again(
    fleet, netns, tmp_path
):
    """When the next gateway is too slow to answer (server-poll-timeout), OpenVPN goes on to its
    next remote, the dead one: the guard gives that dial up too, so the device is back on the
    next gateway a connect-retry pause later instead of a server-poll-timeout. (Here the device
    may leave the frozen second gateway by its ping-restart instead: not a completed
    connection, so that one is not taken for dead.)"""
    after, guard_log = failing_over(fleet, netns, tmp_path, guard=True, second_slow=True)
    assert DIALS.findall(after) == [str(PORT), str(SECOND_PORT), str(PORT), str(SECOND_PORT)], after
    dials_of_the_dead = after.split(f"link remote: [AF_INET]127.0.0.1:{PORT}\n")[1:]
    for given_up in (part.split("link remote:")[0] for part in dials_of_the_dead):
        assert "MANAGEMENT: CMD 'signal SIGUSR1'" in given_up, after
        assert "Server poll timeout" not in given_up and "Inactivity timeout" not in given_up, after
    assert guard_log.count(f"127.0.0.1:{PORT} did not answer pings") == 2, guard_log

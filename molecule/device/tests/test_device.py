"""What a platform engineer checks on a device after converge: its key, certificate, tunnel unit."""

import json
import os
import re
import time
from pathlib import Path

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

from iotistic_vpn.pki import tlscrypt

PKI = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki"  # the control node's side
DIR = "/etc/openvpn/client/iotistic"


@pytest.fixture(scope="module")
def hostvars(host):
    """This device's inventory variables (customer, key type, verify name)."""
    inventory = AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
    return {"vpn_pki_device_key_type": "ec-p256"} | inventory.get_variables(host.backend.name)


@pytest.fixture(scope="module")
def device(host):
    return host.backend.name


def owner_mode(host, path):
    """(user, group, mode) of a file in one command: each command is a podman exec."""
    user, group, mode = host.check_output(f"stat -c '%U %G %a' {path}").split()
    return user, group, int(mode, 8)


@pytest.fixture(scope="module")
def config(host):
    """The client config as a list of lines without comments and blanks."""
    text = host.file("/etc/openvpn/client/iotistic.conf").content_string
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_device_key_is_private_and_of_the_asked_type(host, hostvars):
    assert owner_mode(host, f"{DIR}/device.key") == ("root", "root", 0o600)
    text = host.check_output(f"openssl pkey -in {DIR}/device.key -noout -text")
    curve = {"ec-p256": "P-256", "ec-p384": "P-384"}[hostvars["vpn_pki_device_key_type"]]
    assert f"NIST CURVE: {curve}" in text


def test_device_key_never_reaches_the_control_node(host, hostvars, device):
    body = "".join(host.file(f"{DIR}/device.key").content_string.strip().splitlines()[1:-1])
    files = [p for p in PKI.rglob("*") if p.is_file()]
    assert files, f"nothing under {PKI}"
    assert not [p for p in files if body[:64] in p.read_text(errors="replace")]
    # The control node holds the certificate and the tls-crypt-v2 client key, never a key file.
    mine = sorted(p.name for p in (PKI / "devices" / hostvars["customer"]).iterdir())
    assert f"{device}.key" not in mine
    assert {f"{device}.crt", f"{device}.tls-crypt-v2.key"} <= set(mine)
    assert not [p for p in files if "devices" in p.parts and "PRIVATE KEY" in p.read_text()]


def test_certificate_chains_to_the_fleet_ca_and_names_the_device(host, hostvars, device):
    assert host.file(f"{DIR}/ca.pem").content_string == (PKI / "ca" / "ca-chain.crt").read_text()
    assert owner_mode(host, f"{DIR}/device.crt") == ("root", "root", 0o644)
    verify = host.run(f"openssl verify -purpose sslclient -CAfile {DIR}/ca.pem {DIR}/device.crt")
    assert verify.stdout.strip() == f"{DIR}/device.crt: OK", verify.stderr
    facts = host.check_output(
        f"openssl x509 -in {DIR}/device.crt -noout -subject -nameopt RFC2253"
        " -ext subjectAltName,extendedKeyUsage"
    )
    customer = hostvars["customer"]
    assert f"CN={device}" in facts and f"O={customer}" in facts
    assert f"URI:urn:iotistic:{customer}:{device}" in facts
    assert "TLS Web Client Authentication" in facts and "Server" not in facts
    # The certificate is for the key made on the device.
    cert_key = host.check_output(f"openssl x509 -in {DIR}/device.crt -noout -pubkey")
    assert cert_key == host.check_output(f"openssl pkey -in {DIR}/device.key -pubout")


def test_tls_crypt_v2_key_is_private_and_unwraps_with_the_fleet_key(host, hostvars, device):
    assert owner_mode(host, f"{DIR}/tls-crypt-v2.key") == ("root", "root", 0o600)
    key = host.file(f"{DIR}/tls-crypt-v2.key").content
    server = (PKI / "tls-crypt-v2-server.key").read_bytes()
    tlscrypt.unwrap_client_key(server, key)
    mine = PKI / "devices" / hostvars["customer"] / f"{device}.tls-crypt-v2.key"
    assert key == mine.read_bytes()
    assert mine.stat().st_mode & 0o777 == 0o600


def test_client_config_has_the_lines_that_matter(config, hostvars):
    assert [line for line in config if line.startswith("remote ")] == [
        "remote 127.0.0.1 1194",
        "remote 127.0.0.2 1195",
    ]
    for line in (
        "client",
        "dev iotistic0",  # conventions.DEVICE_TUNNEL_INTERFACE: what the firewall keys on
        "dev-type tun",
        "proto udp",
        "remote-random",
        "resolv-retry infinite",
        "nobind",
        "persist-key",
        "persist-tun",
        "remote-cert-tls server",
        f"tls-crypt-v2 {DIR}/tls-crypt-v2.key",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
        "allow-compression no",
        "connect-retry 1 300",
        "ping 10",
        "ping-restart 30",
        "hand-window 30",
        "server-poll-timeout 4",
        "tls-timeout 4",
        "management /run/iotistic-vpn-tunnel/management.sock unix",
    ):
        assert line in config
    assert not [line for line in config if line.startswith(("comp-lzo", "compress"))]
    # The tunnel never waits for the guard's answer.
    assert "management-query-remote" not in config and "management-hold" not in config
    assert not [line for line in config if line.startswith("connect-retry-max")]  # unlimited
    verify = [line for line in config if line.startswith("verify-x509-name")]
    name = hostvars.get("openvpn_device_verify_x509_name")
    assert verify == ([f"verify-x509-name {name} name-prefix"] if name else [])


def test_client_runs_and_keeps_retrying_without_exiting(host):
    service = host.service("openvpn-client@iotistic")
    assert service.is_enabled and service.is_running
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            "systemctl show openvpn-client@iotistic"
            " -p Restart,NRestarts,StartLimitIntervalUSec,Type,ExecStartPre,ExecMainPID"
            " -p RestartPreventExitStatus"
        ).splitlines()
    )
    assert props["Restart"] == "always" and props["Type"] == "notify"
    assert props["StartLimitIntervalUSec"] == "0"
    # Status 0 is a gateway's HALT or final AUTH_FAILED (revoked): not restarted.
    assert props["RestartPreventExitStatus"] == "0"
    # No gateway answers, yet the process never exited: OpenVPN retries by itself.
    assert props["NRestarts"] == "0"
    assert "shuf -i 0-3000" in props["ExecStartPre"]
    cmdline = host.file(f"/proc/{props['ExecMainPID']}/cmdline").content.split(b"\0")
    assert cmdline[0] == b"/usr/sbin/openvpn" and b"iotistic.conf" in cmdline


def test_the_remote_guard_follows_the_tunnel_which_goes_round_its_remotes(host):
    """The guard is on the tunnel's management socket (it asked for the state and the remote
    count), and the tunnel, which no gateway answers here, still goes round both remotes."""
    guard = host.service("iotistic-vpn-remote-guard")
    assert guard.is_enabled and guard.is_running
    assert host.file("/run/iotistic-vpn-tunnel").mode == 0o700
    dialled: set[str] = set()
    for _ in range(40):  # each remote is given server-poll-timeout (4 s)
        journal = host.check_output("journalctl -u openvpn-client@iotistic -o cat --no-pager")
        dialled = set(re.findall(r"link remote: \[AF_INET\]([0-9.]+:[0-9]+)", journal))
        if len(dialled) == 2 and "CMD 'remote-entry-count'" in journal:
            break
        time.sleep(0.5)
    assert "MANAGEMENT: Client connected" in journal
    assert "MANAGEMENT: CMD 'state on'" in journal and "CMD 'remote-entry-count'" in journal
    assert dialled == {"127.0.0.1:1194", "127.0.0.2:1195"}


def test_standin_agent_answers_for_this_device(host, hostvars, device):
    service = host.service("iotistic-device-agent")
    assert service.is_enabled and service.is_running
    assert host.socket("tcp://0.0.0.0:48484").is_listening
    answer = json.loads(host.check_output("curl -sf http://127.0.0.1:48484/v1/device"))
    assert (answer["device_id"], answer["customer_id"]) == (device, hostvars["customer"])
    pid = host.check_output("systemctl show -p MainPID --value iotistic-device-agent")
    assert host.file(f"/proc/{pid}").user == "nobody"


def _other(device: str) -> str:
    return "molecule-device-2" if device == "molecule-device-1" else "molecule-device-1"


def test_agent_api_and_ssh_are_closed_off_the_tunnel(host, device):
    """From the other device on the same network, the agent API is dropped (a timeout, not a
    refusal) and the table counts it; on loopback it answers (test above)."""
    firewall = host.service("iotistic-device-firewall")
    assert firewall.is_enabled and firewall.is_running
    table = host.check_output("nft -j list table inet iotistic_device")
    ports = next(item["set"]["elem"] for item in json.loads(table)["nftables"]
                 if item.get("set", {}).get("name") == "service_ports")  # fmt: skip
    assert sorted(ports) == [22, 48484]

    def dropped() -> int:
        rules = json.loads(host.check_output("nft -j list chain inet iotistic_device service_port"))
        return sum(expr["counter"]["packets"] for item in rules["nftables"] if "rule" in item
                   for expr in item["rule"]["expr"] if "counter" in expr)  # fmt: skip

    before = dropped()
    address = host.interface("eth0").addresses[0]
    other = testinfra.get_host(f"podman://{_other(device)}")
    for port in (48484, 22):
        asked = other.run(f"curl -s -o /dev/null --max-time 2 http://{address}:{port}/")
        assert asked.rc == 28, f"{address}:{port} answered off the tunnel (curl exit {asked.rc})"
    after = dropped()
    assert after >= before + 2
    # Nothing else is touched: a port where nothing listens is refused at once (a reset), not
    # dropped, and the device's own traffic (its OpenVPN's UDP, DNS) goes on.
    refused = other.run(f"curl -s -o /dev/null --max-time 2 http://{address}:9/")
    assert refused.rc == 7, f"{address}:9 was not refused (curl exit {refused.rc})"
    assert dropped() == after


def test_ssh_takes_keys_only(host):
    """sshd's effective settings, whatever the image's own drop-ins say."""
    effective = dict(
        line.split(" ", 1) for line in host.check_output("/usr/sbin/sshd -T").splitlines()
    )
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["authenticationmethods"] == "publickey"
    assert effective["permitrootlogin"] == "without-password"  # prohibit-password's other name

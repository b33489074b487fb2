"""What a platform engineer checks on a gateway after converge: instances, PKI, firewall, agent."""

import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from testinfra.utils.ansible_runner import AnsibleRunner

# The shared names come from their one home; molecule's verifier runs in the project's venv.
from iotistic_vpn import conventions, pki

PKI = conventions.GATEWAY_PKI_DIR
CRL_DIR = conventions.CRL_DIR
REVOKED_DIR = conventions.REVOKED_DEVICES_DIR
VERIFY = "/bin/sh /usr/local/lib/iotistic-vpn/tlsverify/tlsverify.sh"
AGENT_CONFIG = conventions.AGENT_CONFIG_PATH
AGENT_VENV = "/opt/iotistic-vpn/venv"
FACT = "/etc/ansible/facts.d/iotistic_vpn_gateway.fact"
# The throwaway fleet PKI converge.yml made on this machine.
LOCAL_PKI = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "pki"


@pytest.fixture(scope="module")
def instances(host):
    """Return the instance count the role chose: one per vCPU (the scenario sets none)."""
    return int(host.check_output("getconf _NPROCESSORS_ONLN"))


@pytest.fixture(scope="module")
def layout(instances):
    """Return the layout a gateway with that many instances has in the default pool."""
    return conventions.gateway_instances(instances)


@pytest.fixture(scope="module")
def address(host):
    """Return the gateway's address on the podman network."""
    links = json.loads(host.check_output("ip -j -4 addr show dev eth0"))
    return links[0]["addr_info"][0]["local"]


@pytest.fixture(scope="module")
def registry_address():
    """Return the registry container's address, as converge gave it to the agent."""
    return subprocess.check_output(
        ["podman", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "molecule-gateway-db"],
        text=True,
    ).strip()


def hostvars(host):
    """Return the gateway's inventory variables (the scenario's one home for its test secret)."""
    return AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_variables(host.backend.name)


def options(host, inst):
    """Return instance `inst`'s configuration as {option: [argument strings]}."""
    text = host.file(f"/etc/openvpn/server/{inst.name}.conf").content_string
    parsed = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            name, _, rest = line.strip().partition(" ")
            parsed.setdefault(name, []).append(rest)
    return parsed


def nft(host, chain):
    """Return one chain of the gateway's table as nft prints it."""
    return host.check_output(f"nft list chain inet iotistic_vpn {chain}")


def test_one_instance_per_vcpu_is_running_and_enabled(host, layout):
    for inst in layout:
        service = host.service(inst.unit)
        assert service.is_running, f"{inst.unit} is not running"
        assert service.is_enabled
    configs = host.check_output("ls /etc/openvpn/server/").split()
    expected = {f"{inst.name}.conf" for inst in layout}
    assert {c for c in configs if c.endswith(".conf")} == expected


def test_the_layout_is_published_as_a_local_fact(host):
    fact = host.file(FACT)
    assert (fact.user, fact.group, fact.mode) == ("root", "root", 0o644)
    published = json.loads(fact.content_string)
    count = len(published["instances"])
    assert published == {
        "pool": conventions.VPN_POOL,
        "instances": conventions.instance_dicts(count),
        "device_ports": [conventions.DEVICE_AGENT_PORT, 22],
        "pki": {"ca": f"{PKI}/ca.pem", "cert": f"{PKI}/server.crt", "key": f"{PKI}/server.key"},
    }


def test_each_instance_listens_on_its_own_port_and_none_on_the_front(host, layout):
    for inst in layout:
        assert host.socket(f"udp://0.0.0.0:{inst.port}").is_listening
    # The public port is the nftables front: nothing needs to listen there.
    assert not host.socket(f"udp://{conventions.OPENVPN_PORT}").is_listening


def test_each_instance_holds_a_reconnect_storm_in_its_socket_buffers(host, layout):
    """A lost gateway's devices all dial at once: the kernel's default buffer (some 100
    datagrams) drops their handshakes while an instance is busy, so each socket has what its
    config asks, as far as the host lets it (the kernel doubles it, capped at rmem_max)."""
    read = {n: int(host.file(f"/proc/sys/net/core/{n}").content_string) for n in
            ("rmem_max", "rmem_default", "wmem_max")}  # fmt: skip
    sockets = host.check_output("ss -uanm")
    for inst in layout:
        conf = options(host, inst)
        wanted = int(conf["rcvbuf"][0]), int(conf["sndbuf"][0])
        held = re.search(rf":{inst.port}\s.*\n\s*skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)", sockets)
        assert held, sockets
        assert int(held[1]) == 2 * min(wanted[0], read["rmem_max"]), held[0]
        assert int(held[2]) == 2 * min(wanted[1], read["wmem_max"]), held[0]
        assert int(held[1]) > 2 * read["rmem_default"], held[0]


def test_each_instance_carries_its_gateway_address_on_its_tun(host, layout):
    for inst in layout:
        link = json.loads(host.check_output(f"ip -j -4 addr show dev {inst.tun}"))[0]
        info = link["addr_info"][0]
        assert ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}") == (
            ipaddress.ip_interface(f"{inst.address}/{inst.netmask}")
        )


def test_instance_configuration_isolates_devices_and_hands_connects_to_the_agent(host, layout):
    for inst in layout:
        conf = options(host, inst)
        assert conf["mode"] == ["server"]
        assert conf["dev"] == [inst.tun]
        assert conf["port"] == [str(inst.port)]
        assert conf["proto"] == ["udp"]
        assert conf["topology"] == ["subnet"]
        assert conf["ifconfig"] == [f"{inst.address} {inst.netmask}"]
        # The same for every instance (no route-gateway): a device that moves keeps its tun.
        assert conf["push"] == ['"topology subnet"']
        # Devices never talk to each other through OpenVPN, and nothing is compressed.
        assert "client-to-client" not in conf
        assert not {"comp-lzo", "compress", "comp-noadapt"} & conf.keys()
        assert conf["allow-compression"] == ["no"]
        # Every connect is the agent's decision; certificates are the only credential.
        assert conf["management"] == [f"{inst.management} unix"]
        assert "management-client-auth" in conf
        # ...and no device is let in before the agent can decide: it releases the hold.
        assert "management-hold" in conf
        assert "auth-user-pass-optional" in conf
        assert conf["crl-verify"] == [f"{CRL_DIR} dir"]
        assert conf["tls-crypt-v2"] == [f"{PKI}/tls-crypt-v2.key"]
        assert conf["script-security"] == ["2"]
        assert conf["tls-crypt-v2-verify"] == [f'"{VERIFY} {REVOKED_DIR} --timestamp-keys admit"']
        assert conf["remote-cert-tls"] == ["client"]
        assert conf["data-ciphers"] == ["AES-256-GCM:CHACHA20-POLY1305"]
        assert conf["tls-version-min"] == ["1.2"]
        assert (conf["user"], conf["group"]) == (["nobody"], ["nogroup"])
        assert "disable-dco" not in conf


def test_instances_started_unprivileged_with_management_sockets(host, layout):
    for inst in layout:
        log = host.check_output(f"journalctl -u {inst.unit} --no-pager -o cat")
        assert "Initialization Sequence Completed" in log
        assert "UID set to nobody" in log
        assert host.socket(f"unix://{inst.management}").is_listening


def test_pki_files_have_their_modes(host):
    names = ["ca.pem", "server.crt", "crl.pem", "server.key", "tls-crypt-v2.key"]
    listing = host.check_output(f"cd {PKI} && stat -c '%n %U %G %a' {' '.join(names)}")
    found = {name: rest for name, rest in (line.split(" ", 1) for line in listing.splitlines())}
    assert found == {
        "ca.pem": "root root 644",
        "server.crt": "root root 644",
        "crl.pem": "root root 644",
        "server.key": "root root 600",
        "tls-crypt-v2.key": "root root 600",
    }


def test_pki_files_are_what_openvpn_expects(host):
    assert (
        "BEGIN OpenVPN tls-crypt-v2 server key"
        in host.file(f"{PKI}/tls-crypt-v2.key").content_string
    )
    # The server certificate verifies against the chain the devices also trust.
    host.run_expect([0], f"openssl verify -CAfile {PKI}/ca.pem -purpose sslserver {PKI}/server.crt")


def test_crl_dir_stays_readable_after_the_privilege_drop(host):
    # OpenVPN, running as nobody, opens <crl.d>/<serial> per handshake; a file it cannot open
    # would count as not revoked.
    assert host.file(CRL_DIR).mode == 0o755
    host.run_expect([0], f"runuser -u nobody -- ls {CRL_DIR}")


def test_instances_may_start_the_verify_script_whatever_else_runs_as_nobody(host, layout):
    # Debian's LimitNPROC=10 counts every nobody process of the host: the drop-in raises it.
    for inst in layout:
        limit = host.check_output(f"systemctl show -p LimitNPROC --value {inst.unit}")
        assert int(limit) == 2 * len(layout) + 64


def test_tls_crypt_v2_verify_runs_as_nobody_and_refuses_a_revoked_device(host):
    # As OpenVPN runs it after dropping to nobody: a device named in revoked-devices.d (which
    # the agent keeps) is refused, any other admitted, metadata naming no device refused.
    assert host.file(REVOKED_DIR).mode == 0o755
    meta = host.check_output("mktemp")
    run = f"runuser -u nobody -- env metadata_type=0 metadata_file={meta} {VERIFY} {REVOKED_DIR}"
    try:
        host.run_expect([0], f"printf urn:iotistic:acme:dev-ok > {meta} && chmod 644 {meta}")
        host.run_expect([0], run)
        host.run_expect([0], f"touch {REVOKED_DIR}/dev-ok")
        refused = host.run(run)
        assert refused.rc == 1
        assert "refused: device acme/dev-ok is revoked" in refused.stderr
        host.run_expect([0], f"printf 'urn:iotistic:acme:../x' > {meta}")
        host.run_expect([1], run)
    finally:
        host.run(f"rm -f {meta} {REVOKED_DIR}/dev-ok")


def test_firewall_table_is_loaded_and_loaded_on_boot(host):
    assert host.service("iotistic-vpn-nftables").is_enabled
    assert "table inet iotistic_vpn" in host.check_output("nft list tables")


def test_front_port_is_spread_over_every_instance_by_hash(host, layout):
    rule = nft(host, "prerouting")
    spread = ", ".join(f"{inst.index} : {inst.port}" for inst in layout)
    assert (
        f"udp dport {conventions.OPENVPN_PORT} counter packets" in rule
        and f"redirect to :jhash ip saddr . udp sport mod {len(layout)} map {{ {spread} }}" in rule
    ), rule


def test_front_port_reaches_every_instance(host, address, layout):
    """UDP to the front from many source ports lands on every instance (each logs the packet)."""
    front = (address, conventions.OPENVPN_PORT)
    ports = range(42000, 42000 + 16 * len(layout))
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(front)  # no packet sent: asks the kernel for our source address
        local = probe.getsockname()[0]
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind((local, port))
            # An OpenVPN control packet header with no valid session: logged, then dropped.
            sender.sendto(bytes([0x38]) + bytes(40), front)
    seen = {}
    for _ in range(20):
        for inst in layout:
            log = host.check_output(
                f"journalctl -u {inst.unit} --no-pager -o cat --since '{since}'"
            )
            seen[inst.name] = {int(p) for p in re.findall(r"from \[AF_INET\][0-9.]+:(\d+)", log)}
        if set().union(*seen.values()) >= set(ports):
            break
        time.sleep(0.25)
    assert all(seen.values()), f"packets per instance: {seen}"
    # Each flow went to exactly one instance.
    assert sum(len(s) for s in seen.values()) == len(set().union(*seen.values()))


def test_devices_can_reach_neither_each_other_nor_anything_through_the_gateway(host):
    forward = nft(host, "forward")
    assert re.search(r'iifname "tun\*" counter packets \d+ bytes \d+ drop', forward), forward
    assert re.search(r'oifname "tun\*" counter packets \d+ bytes \d+ drop', forward), forward


def test_devices_open_nothing_on_the_gateway(host):
    from_devices = nft(host, "from_devices")
    assert "ct state established,related accept" in from_devices
    assert "icmp type echo-request ip daddr @gateway_addresses accept" in from_devices
    assert re.search(r"counter packets \d+ bytes \d+ drop\s*}", from_devices), from_devices
    assert 'iifname "tun*" jump from_devices' in nft(host, "input")


def test_gateway_opens_only_the_agent_api_and_ssh_to_devices(host):
    to_devices = nft(host, "to_devices")
    # Only the tunnel service's marked sockets (SO_MARK) open connections to devices.
    mark = f"{conventions.TUNNEL_SERVICE_MARK:#010x}"
    assert f"ct state new tcp dport @device_ports meta mark {mark} accept" in to_devices
    assert re.search(r"counter packets \d+ bytes \d+ drop\s*}", to_devices), to_devices
    ports = host.check_output("nft list set inet iotistic_vpn device_ports")
    agent = conventions.DEVICE_AGENT_PORT
    assert re.search(rf"elements = \{{ (22, {agent}|{agent}, 22) \}}", ports), ports


def test_kernel_settings_are_kept_for_boot(host, layout):
    settings = host.file("/etc/sysctl.d/60-iotistic-vpn.conf").content_string
    assert "net.ipv4.ip_forward = 0" in settings
    assert "net.ipv4.conf.all.rp_filter = 1" in settings
    # Room for what the instances' socket buffers ask (in a container the host's applies).
    room = dict(re.findall(r"^net\.core\.([rw]mem_max) = (\d+)$", settings, re.M))
    for inst in layout:
        conf = options(host, inst)
        assert int(room["rmem_max"]) >= int(conf["rcvbuf"][0]), settings
        assert int(room["wmem_max"]) >= int(conf["sndbuf"][0]), settings


def test_agent_configuration_is_private_and_complete(host, layout, registry_address):
    file = host.file(AGENT_CONFIG)
    assert (file.user, file.group, file.mode) == ("root", "root", 0o600)
    # Read the way the agent reads it: tomllib on the gateway's own Python.
    config = json.loads(
        host.check_output(
            "python3 -c 'import json, sys, tomllib; "
            f'print(json.dumps(tomllib.load(open("{AGENT_CONFIG}", "rb"))))\''
        )
    )
    assert config["gateway"] == "molecule-gateway-gw"
    assert config["crl_dir"] == CRL_DIR
    assert config["state_path"] == conventions.AGENT_STATE_PATH
    assert config["netmask"] == conventions.tunnel_netmask()
    assert config["registry"]["host"] == registry_address
    assert config["registry"]["password"] == hostvars(host)["gateway_agent_registry_password"]
    assert config["instances"] == [
        {"name": inst.name, "management": inst.management, "tun": inst.tun} for inst in layout
    ]
    assert config["tunnel"] == {
        "listen": f"0.0.0.0:{conventions.TUNNEL_SERVICE_PORT}",
        "cert": f"{PKI}/server.crt",
        "key": f"{PKI}/server.key",
        "ca": f"{PKI}/ca.pem",
        "device_ports": [conventions.DEVICE_AGENT_PORT, 22],
    }


def _tunnel_answer(address, client_cert=None):
    """CONNECT through the gateway's tunnel service; its status line, or the TLS error."""
    ctx = ssl.create_default_context(cafile=str(LOCAL_PKI / "ca/ca-chain.crt"))
    if client_cert:
        ctx.load_cert_chain(*client_cert)
    try:
        with (
            socket.create_connection((address, conventions.TUNNEL_SERVICE_PORT), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="molecule-gateway-gw") as tls,
        ):
            tls.sendall(b"CONNECT nosuch-device:48484 HTTP/1.1\r\n\r\n")
            answer = tls.recv(200)
            return answer.decode("latin-1").split("\r\n")[0] if answer else "refused: closed"
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {exc}"


def test_tunnel_service_refuses_a_client_without_a_certificate(host, address, tmp_path):
    """Mutual TLS on 8443 with the gateway's own certificate; only the tunnel client gets in."""
    assert host.socket(f"tcp://0.0.0.0:{conventions.TUNNEL_SERVICE_PORT}").is_listening
    for _ in range(40):  # the agent may still be starting right after converge
        anonymous = _tunnel_answer(address)
        if "Connection refused" not in anonymous:
            break
        time.sleep(0.25)
    # The server certificate checked out (else the error names verification): then the
    # service ended the session for want of a client certificate (a TLS alert, or closed with
    # not a byte), before any CONNECT answer.
    assert anonymous.startswith("refused: "), anonymous
    assert "CERTIFICATE_VERIFY_FAILED" not in anonymous, anonymous
    # The same CONNECT with the API's tunnel client certificate is heard: no such device here.
    ca = pki.load_issuing_ca(LOCAL_PKI / "ca", None)
    client = pki.ensure_gateway_cert(ca, "molecule-api", tmp_path, purpose="tunnel-client")
    assert _tunnel_answer(address, (client.cert_path, client.key_path)).split()[1] == "404"


def test_agent_package_runs_on_debian_libraries(host):
    found = host.check_output(
        f"{AGENT_VENV}/bin/python3 -c 'import iotistic_vpn.gateway.management as m, psycopg; "
        "print(m.__file__, psycopg.__file__, psycopg.__version__)'"
    ).split()
    assert found[0].startswith(f"{AGENT_VENV}/lib/")
    assert found[1].startswith("/usr/lib/python3/dist-packages/")  # Debian's python3-psycopg


def test_agent_unit_is_enabled_and_ordered_before_the_instances(host, layout):
    assert host.service("iotistic-gateway-agent").is_enabled
    # Each instance holds until the agent releases it: an agent after them would wait on them.
    units = {inst.unit for inst in layout}
    before = host.check_output("systemctl show -p Before --value iotistic-gateway-agent").split()
    after = host.check_output("systemctl show -p After --value iotistic-gateway-agent").split()
    assert units <= set(before) and not units & set(after), (before, after)
    # Its only capability: routes and the tunnel service's SO_MARK (what the firewall lets out).
    caps = host.check_output(
        "systemctl show -p CapabilityBoundingSet --value iotistic-gateway-agent"
    )
    assert caps.split() == ["cap_net_admin"], caps


def _healthy(host) -> dict:
    """The agent's /healthz answer, whatever its status, once it answers at all."""
    for _ in range(40):  # the agent may still be connecting right after a (re)start
        result = host.run(f"curl -s http://127.0.0.1:{conventions.AGENT_HTTP_PORT}/healthz")
        if result.rc == 0 and result.stdout.strip():
            return json.loads(result.stdout)
        time.sleep(0.25)
    return {}


def test_only_a_stop_of_the_drain_unit_drains_never_an_agent_restart(host, layout):
    drain = host.service("iotistic-gateway-drain")
    assert drain.is_enabled and drain.is_running
    after = host.check_output("systemctl show -p After --value iotistic-gateway-drain").split()
    # Stopped first at shutdown, while the agent and the instances still carry the tunnels.
    assert {"iotistic-gateway-agent.service", *(inst.unit for inst in layout)} <= set(after)
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    time.sleep(1)  # journalctl --since has a resolution of one second
    # What the role's handler does on any change: the agent comes back, the drain unit stays.
    host.run_test("systemctl restart iotistic-gateway-agent")
    assert _healthy(host).get("draining") is False
    assert host.service("iotistic-gateway-drain").is_running
    agent_log = host.check_output(
        f"journalctl -u iotistic-gateway-agent --no-pager -o cat --since '{since}'"
    )
    assert "draining" not in agent_log and "drained" not in agent_log, agent_log
    # Stopping the drain unit (what a shutdown does) drains through the running agent.
    host.run_test("systemctl stop iotistic-gateway-drain")
    drain_log = host.check_output(
        f"journalctl -u iotistic-gateway-drain --no-pager -o cat --since '{since}'"
    )
    assert "drained 0" in drain_log, drain_log
    assert _healthy(host).get("draining") is True
    # Back as converged: a draining agent stays so until it restarts.
    host.run_test("systemctl start iotistic-gateway-drain")
    host.run_test("systemctl restart iotistic-gateway-agent")
    assert _healthy(host).get("draining") is False


def test_agent_is_healthy_and_holds_every_instance(host, layout):
    assert host.service("iotistic-gateway-agent").is_running
    health = {}
    for _ in range(40):  # the agent may still be connecting right after converge
        result = host.run(f"curl -s -f http://127.0.0.1:{conventions.AGENT_HTTP_PORT}/healthz")
        if result.rc == 0:
            health = json.loads(result.stdout)
            break
        time.sleep(0.25)
    assert health.get("status") == "ok", health
    assert set(health["instances"]) == {inst.name for inst in layout}
    assert all(i["management"] for i in health["instances"].values())
    assert health["registry_reachable"] is True
    # The agent let each instance start (management-hold), and says so.
    log = host.check_output("journalctl -u iotistic-gateway-agent --no-pager -o cat")
    for inst in layout:
        assert f"instance {inst.name}: hold released" in log, log


def test_everything_comes_back_after_a_reboot(host, layout):
    """Restart the container: firewall first, then the instances, released by a healthy agent
    (ordered before them: it starts first and releases each as it opens its socket)."""
    subprocess.run(["podman", "restart", host.backend.name], check=True, capture_output=True)
    # podman's network gives a restarted container another address: record it where the
    # inventory's SSH connection reads it (.config/molecule/create.yml), for the tests after.
    address = subprocess.run(
        ["podman", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", host.backend.name],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ssh_dir = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ssh"
    (ssh_dir / f"{host.backend.name}.address").write_text(f"{address}\n")
    known = (ssh_dir / "known_hosts").read_text()
    key = host.check_output("cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub")
    (ssh_dir / "known_hosts").write_text(f"{known}{address} {key}\n")
    state = ""
    for _ in range(60):
        state = host.run("systemctl is-system-running").stdout.strip()
        if state in {"running", "degraded"}:
            break
        time.sleep(0.5)
    assert state == "running"
    units = ["iotistic-vpn-nftables"] + [inst.unit.removesuffix(".service") for inst in layout]
    started = {
        unit: int(
            host.check_output(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}")
        )
        for unit in units
    }
    assert all(started.values()), started
    assert all(started["iotistic-vpn-nftables"] < started[unit] for unit in units[1:]), started
    assert "jhash ip saddr" in nft(host, "prerouting")
    health = {}
    for _ in range(40):
        result = host.run(f"curl -s -f http://127.0.0.1:{conventions.AGENT_HTTP_PORT}/healthz")
        if result.rc == 0 and json.loads(result.stdout)["status"] == "ok":
            health = json.loads(result.stdout)
            break
        time.sleep(0.25)
    assert health.get("status") == "ok", health
    # Released: a held instance is "activating" and has not bound its port yet.
    for inst in layout:
        assert host.service(inst.unit).is_running, inst.unit
        assert host.check_output(f"systemctl is-active {inst.unit}") == "active"
        assert host.socket(f"udp://0.0.0.0:{inst.port}").is_listening

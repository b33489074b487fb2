"""The roles, the modules and the docs agree with iotistic_vpn.conventions, for any pool.

The gateway's templates are rendered by a real ansible-playbook on localhost with a pool and an
instance count that are not the defaults, so a value restated by hand anywhere in the chain
(openvpn_gateway's layout, the local fact it publishes, gateway_agent reading that fact) shows up
as a difference. The play loads each role's defaults and vars as the role itself would see them
and templates the role's own files into a temporary directory; the local fact is written from
openvpn_gateway's own `_openvpn_gateway_fact` and read back with `setup`, as gateway_agent does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from iotistic_vpn import conventions
from iotistic_vpn.gateway.config import RegistryConfig, parse_config
from tests.support.ansible_run import REPO, module_argument_spec, run_playbook

POOL = "10.96.0.0/12"
COUNT = 3
ROLES = REPO / "roles"


def _role_files(role: str) -> list[str]:
    return [str(ROLES / role / "defaults/main.yml"), str(ROLES / role / "vars/main.yml")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Render the gateway's OpenVPN, nftables and agent configurations; return their folder."""
    tmp = tmp_path_factory.mktemp("rendered")
    facts = tmp / "facts.d"
    gateway = ROLES / "openvpn_gateway" / "templates"
    tasks = [
        {
            "name": "Render every OpenVPN instance's configuration.",
            "ansible.builtin.template": {
                "src": str(gateway / "iotistic.conf.j2"),
                "dest": f"{tmp}/{{{{ item.name }}}}.conf",
                "mode": "0644",
            },
            "loop": "{{ _openvpn_gateway_layout }}",
        },
        {
            "name": "Render the nftables table.",
            "ansible.builtin.template": {
                "src": str(gateway / "nftables.nft.j2"),
                "dest": f"{tmp}/nftables.nft",
                "mode": "0644",
            },
        },
        {
            "name": "Publish the layout as openvpn_gateway does.",
            "ansible.builtin.copy": {
                "content": "{{ _openvpn_gateway_fact | to_nice_json(sort_keys=true) }}\n",
                "dest": f"{facts}/iotistic_vpn_gateway.fact",
                "mode": "0644",
            },
        },
        {
            "name": "Read the local facts back.",
            "ansible.builtin.setup": {"filter": "ansible_local", "fact_path": str(facts)},
        },
        {
            "name": "Render the agent's configuration from the published layout.",
            "ansible.builtin.template": {
                "src": str(ROLES / "gateway_agent/templates/gateway-agent.toml.j2"),
                "dest": f"{tmp}/gateway-agent.toml",
                "mode": "0600",
            },
        },
    ]
    facts.mkdir()
    play_tasks = [
        {
            "name": "Load the roles' variables.",
            "ansible.builtin.include_vars": {"file": "{{ path }}"},
            "loop": _role_files("openvpn_gateway") + _role_files("gateway_agent"),
            "loop_control": {"loop_var": "path"},
        },
        *tasks,
    ]
    run = run_playbook(
        play_tasks,
        tmp,
        extra_vars={
            "openvpn_gateway_pool": POOL,
            "openvpn_gateway_instances": COUNT,
            "gateway_agent_registry_password": "test-only",
            "gateway_agent_name": "gw-test",
        },
    )
    assert run.failed == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return tmp


def _options(text: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            name, _, rest = line.strip().partition(" ")
            parsed.setdefault(name, []).append(rest)
    return parsed


LAYOUT = conventions.gateway_instances(COUNT, POOL)


@pytest.mark.ansible
@pytest.mark.slow
def test_each_openvpn_configuration_is_its_instance_of_the_layout(rendered):
    assert sorted(p.name for p in rendered.glob("*.conf")) == [f"{i.name}.conf" for i in LAYOUT]
    # The non-default pool really changes the addresses: nothing fell back to 100.64.0.0/10.
    assert LAYOUT[0].address == "10.111.255.1" and LAYOUT[0].netmask == "255.240.0.0"
    for inst in LAYOUT:
        conf = _options((rendered / f"{inst.name}.conf").read_text())
        assert conf["port"] == [str(inst.port)]
        assert conf["dev"] == [inst.tun]
        assert conf["ifconfig"] == [f"{inst.address} {inst.netmask}"]
        assert conf["push"] == ['"topology subnet"']
        assert conf["management"] == [f"{inst.management} unix"]
        assert conf["crl-verify"] == [f"{conventions.CRL_DIR} dir"]
        assert conf["ca"] == [f"{conventions.GATEWAY_PKI_DIR}/ca.pem"]
        assert conf["status"] == [f"{conventions.MANAGEMENT_DIR}/status-{inst.name}.log 10"]


@pytest.mark.ansible
@pytest.mark.slow
def test_nftables_spreads_the_public_port_over_the_layout(rendered):
    table = (rendered / "nftables.nft").read_text()
    spread = ", ".join(f"{inst.index} : {inst.port}" for inst in LAYOUT)
    assert (
        f"udp dport {conventions.OPENVPN_PORT} counter redirect to :jhash ip saddr . udp sport "
        f"mod {COUNT} map {{ {spread} }}"
    ) in table
    addresses = re.search(r"set gateway_addresses \{[^}]*elements = \{ ([^}]*) \}", table)
    assert addresses, table
    assert addresses.group(1).split(", ") == [inst.address for inst in LAYOUT]
    ports = re.search(r"set device_ports \{[^}]*elements = \{ ([^}]*) \}", table)
    assert str(conventions.DEVICE_AGENT_PORT) in ports.group(1).split(", ")
    # Only sockets with the tunnel service's mark open connections to devices (SO_MARK, set
    # by iotistic_vpn.gateway.tunnel from the same convention); everything else new is dropped.
    to_devices = re.search(r"chain to_devices \{([^}]*)\}", table)
    assert to_devices, table
    rules = [line.strip() for line in to_devices.group(1).splitlines() if line.strip()]
    rules = [r for r in rules if not r.startswith("#")]
    assert rules == [
        "ct state established,related accept",
        f"ct state new tcp dport @device_ports meta mark {conventions.TUNNEL_SERVICE_MARK} accept",
        "counter drop",
    ], rules


@pytest.mark.ansible
@pytest.mark.slow
def test_the_agent_configuration_serves_the_published_layout(rendered):
    config = parse_config(tomllib.loads((rendered / "gateway-agent.toml").read_text()))
    assert [(i.name, str(i.management), i.tun) for i in config.instances] == [
        (inst.name, inst.management, inst.tun) for inst in LAYOUT
    ]
    assert config.netmask == conventions.tunnel_netmask(POOL)
    assert str(config.crl_dir) == conventions.CRL_DIR
    assert str(config.state_path) == conventions.AGENT_STATE_PATH
    assert config.http_listen[1] == conventions.AGENT_HTTP_PORT
    assert (config.registry.port, config.registry.dbname) == (
        conventions.POSTGRES_PORT,
        conventions.DATABASE_NAME,
    )
    # The role's timeouts by default are the agent's own.
    timeouts = (config.registry.statement_timeout_s, config.registry.lock_timeout_s)
    assert timeouts == (RegistryConfig.statement_timeout_s, RegistryConfig.lock_timeout_s)
    # The gateway's own login, and the registry verified against the conventional root.
    assert config.registry.user == "gw-test"
    assert (config.registry.sslmode, str(config.registry.sslrootcert)) == (
        "verify-full",
        conventions.REGISTRY_CA_PATH,
    )


def _documented_options(name: str) -> dict:
    """Return the options as ansible-doc shows them to users (doc fragments included)."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-doc")), "--json", name],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=120,
        env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[name]["doc"]["options"]


@pytest.mark.parametrize("name", ["vpn_registry", "vpn_provision"])
def test_the_modules_allocate_from_the_conventions_pool(name, monkeypatch):
    spec = module_argument_spec(name, monkeypatch)
    documented = _documented_options(name)
    for option, value in (
        ("pool", conventions.VPN_POOL),
        ("block_prefix", conventions.CUSTOMER_BLOCK_PREFIX),
    ):
        assert spec[option]["default"] == value, option
        # What ansible-doc shows users is a copy: it must not drift either.
        assert documented[option]["default"] == value, option


def _argspec(role: str) -> dict:
    path = ROLES / role / "meta/argument_specs.yml"
    return yaml.safe_load(path.read_text())["argument_specs"]["main"]["options"]


def test_the_role_argument_specs_document_the_conventions_defaults():
    """The argument specs are documentation (the defaults come from the lookup): keep them true."""
    gateway = _argspec("openvpn_gateway")
    assert gateway["openvpn_gateway_pool"]["default"] == conventions.VPN_POOL
    assert conventions.DEVICE_AGENT_PORT in gateway["openvpn_gateway_device_ports"]["default"]
    agent = _argspec("gateway_agent")
    assert agent["gateway_agent_http_listen"]["default"] == f"0.0.0.0:{conventions.AGENT_HTTP_PORT}"
    assert agent["gateway_agent_registry_port"]["default"] == conventions.POSTGRES_PORT
    assert agent["gateway_agent_registry_dbname"]["default"] == conventions.DATABASE_NAME
    assert agent["gateway_agent_registry_sslrootcert"]["default"] == conventions.REGISTRY_CA_PATH
    api = _argspec("cloud_api")
    assert api["cloud_api_port"]["default"] == conventions.API_CONTAINER_PORT
    connect = api["cloud_api_connect_proxy_listen"]["default"]
    assert connect == f"0.0.0.0:{conventions.API_CONNECT_PORT}"
    device = _argspec("openvpn_device")
    remote_port = device["openvpn_device_remotes"]["options"]["port"]["default"]
    assert remote_port == conventions.OPENVPN_PORT

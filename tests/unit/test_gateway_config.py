"""The agent's TOML configuration: the contract's file parses, every bad value is named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from iotistic_vpn.gateway.config import (
    AgentConfig,
    ConfigError,
    InstanceConfig,
    RegistryConfig,
    load_config,
)

# The file exactly as the gateway_agent role writes it (the contract's example).
CONTRACT = """\
gateway = "gw-1"
http_listen = "0.0.0.0:8089"
state_path = "/var/lib/iotistic-vpn/agent.db"
crl_dir = "/var/lib/iotistic-vpn/crl.d"
netmask = "255.192.0.0"
snapshot_interval_s = 30
full_read_interval_s = 600
reconcile_interval_s = 30
drain_rate_per_s = 50
[registry]
host = "registry"
port = 5432
dbname = "iotistic_vpn"
user = "iotistic_vpn"
password = "s3cr3t-Pa55"
sslmode = "verify-full"
sslrootcert = "/etc/iotistic-vpn/registry-ca.pem"
connect_timeout_s = 3
statement_timeout_s = 10
lock_timeout_s = 3
[[instances]]
name = "iotistic-0"
management = "/run/openvpn-server/iotistic-0.sock"
tun = "tun0"
[[instances]]
name = "iotistic-1"
management = "/run/openvpn-server/iotistic-1.sock"
tun = "tun1"
"""


def _load(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "gateway-agent.toml"
    path.write_text(text)
    return load_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    return str(exc.value).replace(str(tmp_path / "gateway-agent.toml"), "FILE")


def test_the_contracts_file_parses(tmp_path):
    config = _load(tmp_path, CONTRACT)
    assert config == AgentConfig(
        gateway="gw-1",
        registry=RegistryConfig(host="registry", password="s3cr3t-Pa55"),
        instances=(
            InstanceConfig("iotistic-0", Path("/run/openvpn-server/iotistic-0.sock"), "tun0"),
            InstanceConfig("iotistic-1", Path("/run/openvpn-server/iotistic-1.sock"), "tun1"),
        ),
    )
    assert config.http_listen == ("0.0.0.0", 8089)  # noqa: S104
    assert config.control_socket == Path("/var/lib/iotistic-vpn/agent.sock")
    assert "s3cr3t" not in repr(config)


def test_the_registry_conninfo_carries_keepalives_and_a_name(tmp_path):
    info = conninfo_to_dict(_load(tmp_path, CONTRACT).registry.conninfo("agent gw-1"))
    assert info == {
        "host": "registry", "port": "5432", "user": "iotistic_vpn", "password": "s3cr3t-Pa55",
        "dbname": "iotistic_vpn", "sslmode": "verify-full",
        "sslrootcert": "/etc/iotistic-vpn/registry-ca.pem", "application_name": "agent gw-1",
        "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
        "keepalives_count": "3",
        "options": "-c statement_timeout=10000 -c lock_timeout=3000",
    }  # fmt: skip


def test_only_the_gateway_the_registry_and_instances_are_required(tmp_path):
    config = _load(
        tmp_path,
        'gateway = "gw-9"\n[registry]\nhost = "db"\npassword = ""\n'
        '[[instances]]\nname = "iotistic-0"\nmanagement = "/run/x.sock"\ntun = "tun0"\n',
    )
    assert (config.snapshot_interval_s, config.full_read_interval_s) == (30.0, 600.0)
    assert config.reconcile_interval_s == 30.0
    # Never plaintext by default: the registry's certificate and host name are verified.
    assert (config.registry.port, config.registry.sslmode) == (5432, "verify-full")
    assert config.registry.sslrootcert == Path("/etc/iotistic-vpn/registry-ca.pem")
    assert config.http_listen == ("0.0.0.0", 8089)  # noqa: S104
    assert config.netmask == "255.192.0.0"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('gateway = "gw-1"', 'gateway = "gw 1"', "FILE: gateway = 'gw 1': use 1-63 letters"),
        ('http_listen = "0.0.0.0:8089"', 'http_listen = "localhost:8089"',
         "FILE: http_listen = 'localhost:8089': use ADDRESS:PORT"),
        ('http_listen = "0.0.0.0:8089"', 'http_listen = "0.0.0.0:80890"',
         "FILE: http_listen = '0.0.0.0:80890': use ADDRESS:PORT"),
        ('state_path = "/var/lib/iotistic-vpn/agent.db"', 'state_path = "agent.db"',
         "FILE: state_path = 'agent.db': must be an absolute path"),
        ('netmask = "255.192.0.0"', 'netmask = "255.0.255.0"',
         "FILE: netmask = '255.0.255.0': must be a dotted IPv4 netmask"),
        ("snapshot_interval_s = 30", "snapshot_interval_s = 0",
         "FILE: snapshot_interval_s = 0: must be a number > 0"),
        ("reconcile_interval_s = 30", 'reconcile_interval_s = "30"',
         "FILE: reconcile_interval_s = '30': must be a number > 0"),
        ("drain_rate_per_s = 50", "drain_rate_per_s = true",
         "FILE: drain_rate_per_s = True: must be a number > 0"),
        ("port = 5432", "port = 0", "FILE: registry.port = 0: must be a TCP port (1-65535)"),
        ('sslmode = "verify-full"', 'sslmode = "on"',
         "FILE: registry.sslmode = 'on': use one of disable, allow, prefer, require, verify-ca"),
        ('sslrootcert = "/etc/iotistic-vpn/registry-ca.pem"', 'sslrootcert = "ca.pem"',
         "FILE: registry.sslrootcert = 'ca.pem': must be an absolute path"),
        ("connect_timeout_s = 3", "connect_timeout_s = 2.5",
         "FILE: registry.connect_timeout_s = 2.5: must be an integer >= 1"),
        ("lock_timeout_s = 3", "lock_timeout_s = 0",
         "FILE: registry.lock_timeout_s = 0: must be a number > 0"),
        ("statement_timeout_s = 10", 'statement_timeout_s = "10"',
         "FILE: registry.statement_timeout_s = '10': must be a number > 0"),
        ('host = "registry"', 'host = ""', "FILE: registry.host = '': must be a non-empty"),
        ('tun = "tun1"', 'tun = "a-very-long-tun-name"',
         "FILE: instances[1].tun = 'a-very-long-tun-name': must be a network interface name"),
        ('tun = "tun1"', 'tun = "tun0"', "FILE: instances[1].tun = 'tun0': is used by another"),
        ('name = "iotistic-1"', 'name = "iotistic 1"',
         "FILE: instances[1].name = 'iotistic 1': use letters, digits"),
        ('management = "/run/openvpn-server/iotistic-1.sock"', 'management = "iotistic-1.sock"',
         "FILE: instances[1].management = 'iotistic-1.sock': must be the absolute path"),
        ('netmask = "255.192.0.0"', 'netmaks = "255.192.0.0"',
         "FILE: unknown key netmaks (known: ca_file, certificate_file, crl_dir, crl_file,"),
    ],
)  # fmt: skip
def test_a_bad_value_is_named_with_its_key(tmp_path, old, new, message):
    assert old in CONTRACT
    assert _error(tmp_path, CONTRACT.replace(old, new, 1)).startswith(message)


def test_the_password_is_never_echoed(tmp_path):
    # A misspelt key may hold the password, and so may a value of the wrong type.
    text = CONTRACT.replace('password = "s3cr3t-Pa55"', 'pasword = "s3cr3t-Pa55"')
    message = _error(tmp_path, text)
    assert message.startswith("FILE: unknown key registry.pasword (known: connect_timeout_s,")
    assert "s3cr3t" not in message
    message = _error(tmp_path, CONTRACT.replace('"s3cr3t-Pa55"', "123456"))
    assert message == "FILE: registry.password must be a string"


def test_missing_tables_and_files_are_named(tmp_path):
    no_instances = CONTRACT[: CONTRACT.index("[[instances]]")]
    assert _error(tmp_path, no_instances) == (
        "FILE: instances = None: must be a non-empty array of [[instances]] tables"
    )
    assert _error(tmp_path, 'gateway = "gw-1"\n').startswith(
        "FILE: registry = None: must be a [registry] table"
    )
    assert re.match(r"FILE: not valid TOML: ", _error(tmp_path, "gateway = \n"))
    with pytest.raises(ConfigError, match=r"^/nonexistent/agent.toml: cannot read the agent "
                       r"configuration: No such file or directory$"):  # fmt: skip
        load_config("/nonexistent/agent.toml")


TUNNEL = """
[tunnel]
cert = "/etc/openvpn/server/iotistic/server.crt"
key = "/etc/openvpn/server/iotistic/server.key"
ca = "/etc/openvpn/server/iotistic/ca.pem"
device_ports = [48484, 22]
"""


def test_the_tunnel_table_is_optional_and_defaults_to_the_shared_port(tmp_path):
    assert _load(tmp_path, CONTRACT).tunnel is None
    tunnel = _load(tmp_path, CONTRACT + TUNNEL).tunnel
    assert tunnel.listen == ("0.0.0.0", 8443)  # noqa: S104 - what the config says
    assert tunnel.device_ports == (48484, 22)
    assert (tunnel.connect_timeout_s, tunnel.max_tunnels) == (5.0, 1024)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("device_ports = [48484, 22]", "device_ports = []",
         "FILE: tunnel.device_ports = []: must be a non-empty array of TCP ports"),
        ("device_ports = [48484, 22]", "device_ports = [70000]",
         "FILE: tunnel.device_ports = [70000]: must be a non-empty array of TCP ports"),
        ('cert = "/etc/openvpn/server/iotistic/server.crt"', 'cert = "server.crt"',
         "FILE: tunnel.cert = 'server.crt': must be an absolute path"),
        ("[tunnel]", '[tunnel]\nlisten = "everywhere"',
         "FILE: tunnel.listen = 'everywhere': use ADDRESS:PORT"),
        ("[tunnel]", "[tunnel]\nmax_tunnels = 0",
         "FILE: tunnel.max_tunnels = 0: must be an integer >= 1"),
        ("[tunnel]", "[tunnel]\nports = [1]", "FILE: unknown key tunnel.ports (known: ca, cert,"),
    ],
)  # fmt: skip
def test_a_bad_tunnel_value_is_named_with_its_key(tmp_path, old, new, message):
    assert _error(tmp_path, CONTRACT + TUNNEL.replace(old, new, 1)).startswith(message)

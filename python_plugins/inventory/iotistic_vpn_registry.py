"""Ansible inventory plugin: devices of the Iotistic VPN registry (thin adapter)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: iotistic_vpn_registry
short_description: Devices of the Iotistic VPN registry as inventory hosts
description:
  - Reads devices from the registry database (C(iotistic_vpn.registry)) and adds one host
    per device, named by its device id.
  - C(ansible_host) is the device's VPN address, because fleet rollouts reach devices only
    through their tunnels.
  - With O(tunnel_proxy), SSH reaches each device through the cloud API's CONNECT tunnel, by a
    C(ProxyCommand) of C(iotistic-vpn device tunnel), the token from C(IOTISTIC_VPN_TOKEN) in
    the environment of C(ansible-playbook) (scoped to the SSH port; never in the inventory),
    so the control node needs no route to the devices.
  - Groups C(devices), C(customer_<id>), C(state_<state>) and C(gateway_<name>); hyphens and
    dots in ids become underscores in group names.
  - Host vars C(vpn_address), C(customer), C(state), C(gateway), C(connected), C(last_seen).
  - The source file name must end in C(.iotistic_vpn.yml) or C(.iotistic_vpn.yaml).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks the file as a source of this plugin.
    type: str
    required: true
    choices: [iotistic_vpn_registry]
  dsn:
    description: libpq connection string or URI of the registry database.
    type: str
    env:
      - name: IOTISTIC_VPN_REGISTRY_DSN
  login_host:
    description: Host of the registry database (when O(dsn) is not set).
    type: str
    default: localhost
  login_port:
    description: TCP port of the registry database.
    type: int
    default: 5432
  login_user:
    description: Database user.
    type: str
    default: postgres
  login_password:
    description: Password of O(login_user).
    type: str
    env:
      - name: IOTISTIC_VPN_REGISTRY_PASSWORD
  db:
    description: Name of the registry database.
    type: str
    default: iotistic_vpn
  ssl_mode:
    description: libpq sslmode.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: CA certificate file that verifies the server.
    type: path
  connect_timeout:
    description: Seconds to wait for the database.
    type: int
    default: 10
  customers:
    description: Only devices of these customer ids; all customers when empty.
    type: list
    elements: str
    default: []
  states:
    description: Only devices in these states (revoked devices have no tunnel to reach).
    type: list
    elements: str
    default: [provisioned, active]
    choices: [provisioned, active, revoked]
  tunnel_proxy:
    description:
      - The API's CONNECT tunnel listener, C(host:port) or C(unix:PATH). When set, each
        device's C(ansible_ssh_common_args) carries the C(ProxyCommand) that goes through it,
        and C(HostKeyAlias=<device id>), since through a tunnel a device is known by its id, so its
        host key is looked up under that name in C(known_hosts).
    type: str
    env:
      - name: IOTISTIC_VPN_TUNNEL_PROXY
  tunnel_tls:
    description: The tunnel listener speaks TLS (a TCP load balancer terminating it).
    type: bool
    default: false
  tunnel_ca:
    description: CA certificate file that verifies the tunnel listener (with O(tunnel_tls)).
    type: path
  tunnel_command:
    description: The C(iotistic-vpn) command the C(ProxyCommand) runs.
    type: str
    default: iotistic-vpn
  tunnel_ssh_common_args:
    description:
      - More SSH options for every device reached through the tunnel (for example
        C(-o UserKnownHostsFile=...)), after the C(ProxyCommand) and C(HostKeyAlias) the plugin
        writes; the plugin's C(ansible_ssh_common_args) replaces any from group variables.
    type: str
    default: ""
"""

EXAMPLES = r"""
# inventory/production/registry.iotistic_vpn.yml
plugin: iotistic_vpn_registry
# The DSN comes from IOTISTIC_VPN_REGISTRY_DSN, kept out of Git.
states: [active]
keyed_groups:
  - key: connected | ternary('online', 'offline')
    prefix: tunnel
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/iotistic-vpn/inventory
cache_timeout: 300
"""

import re
import shlex

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

try:
    from iotistic_vpn.errors import IotisticVpnError
    from iotistic_vpn.registry import Registry, conninfo

    IMPORT_ERROR = None
except ImportError as exc:  # the controller's Python lacks iotistic-vpn or psycopg
    IMPORT_ERROR = exc

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _group(prefix: str, value: str) -> str:
    return f"{prefix}_{_UNSAFE.sub('_', value)}"


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Hosts from the registry's devices."""

    NAME = "iotistic_vpn_registry"

    def verify_file(self, path):
        """Accept only files named *.iotistic_vpn.yml or *.iotistic_vpn.yaml."""
        return super().verify_file(path) and path.endswith(
            (".iotistic_vpn.yml", ".iotistic_vpn.yaml")
        )

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        if IMPORT_ERROR is not None:
            raise AnsibleParserError(
                f"{path}: the iotistic_vpn_registry plugin needs the iotistic-vpn package and "
                f"psycopg in the controller's Python ({IMPORT_ERROR})"
            )
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        devices = None
        if use_cache:
            try:
                devices = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if devices is None:
            devices = self._query(path)
        if update_cache:
            self._cache[cache_key] = devices
        self._populate(devices)

    def _query(self, path: str) -> list[dict]:
        """Devices as JSON-friendly dicts (the cache stores exactly this)."""
        dsn = conninfo(
            self.get_option("dsn"),
            host=self.get_option("login_host"),
            port=self.get_option("login_port"),
            user=self.get_option("login_user"),
            password=self.get_option("login_password"),
            dbname=self.get_option("db"),
            sslmode=self.get_option("ssl_mode"),
            sslrootcert=self.get_option("ca_cert"),
        )
        customers = self.get_option("customers") or [None]
        try:
            with Registry(dsn, connect_timeout=self.get_option("connect_timeout")) as registry:
                found = [
                    device.as_dict()
                    for customer in customers
                    for state in self.get_option("states")
                    for device in registry.list_devices(customer_id=customer, state=state)
                ]
        except IotisticVpnError as exc:
            # from None: Ansible prints the cause chain too, which would repeat the message.
            raise AnsibleParserError(f"{path}: {exc}") from None
        return sorted(found, key=lambda d: d["id"])

    def _proxy_command(self, device: dict) -> str | None:
        """SSH's options for reaching the device through the API's tunnel, or None."""
        proxy = self.get_option("tunnel_proxy")
        if not proxy:
            return None
        # %p: the SSH port of the host (ansible_port), which the token must allow.
        command = shlex.split(self.get_option("tunnel_command"))
        argv = [*command, "device", "tunnel", device["id"], "%p",
                "--customer", device["customer_id"], "--proxy", proxy]  # fmt: skip
        if self.get_option("tunnel_tls"):
            argv.append("--tls")
            if self.get_option("tunnel_ca"):
                argv += ["--ca", self.get_option("tunnel_ca")]
        command = " ".join(a if a == "%p" else shlex.quote(a) for a in argv)
        args = f"-o ProxyCommand={shlex.quote(command)} -o HostKeyAlias={device['id']}"
        extra = self.get_option("tunnel_ssh_common_args")
        return f"{args} {extra}" if extra else args

    def _populate(self, devices: list[dict]) -> None:
        strict = self.get_option("strict")
        self.inventory.add_group("devices")
        for device in devices:
            host = device["id"]
            self.inventory.add_host(host, group="devices")
            groups = [_group("customer", device["customer_id"]), _group("state", device["state"])]
            if device["gateway"]:
                groups.append(_group("gateway", device["gateway"]))
            for group in groups:
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            hostvars = {
                "ansible_host": device["vpn_address"],
                "vpn_address": device["vpn_address"],
                "customer": device["customer_id"],
                "state": device["state"],
                "gateway": device["gateway"],
                "connected": device["connected"],
                "last_seen": device["last_seen"],
            }
            proxy = self._proxy_command(device)
            if proxy:
                hostvars["ansible_ssh_common_args"] = proxy
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict)

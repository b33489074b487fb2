"""The gateway agent's configuration: one TOML file, read and validated once at start.

Every error names the file, the key and the bad value (never the password), so a typo in
/etc/iotistic-vpn/gateway-agent.toml is found before the agent touches anything.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from .. import conventions, validation
from ..errors import InvalidValue, IotisticVpnError
from ..registry import conninfo
from .renewal import RenewalSettings
from .tunnel import TunnelSettings

__all__ = ["AgentConfig", "ConfigError", "InstanceConfig", "RegistryConfig", "load_config"]

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")  # IFNAMSIZ - 1


class ConfigError(IotisticVpnError, ValueError):
    """The agent's configuration file is missing, unreadable or has a bad value."""


@dataclass(frozen=True)
class RegistryConfig:
    host: str
    password: str = field(repr=False)
    port: int = conventions.POSTGRES_PORT
    dbname: str = conventions.DATABASE_NAME
    user: str = conventions.DATABASE_NAME
    # The registry's certificate is verified, host name included, against this root (RDS's
    # bundle in production): a gateway never sends its password to a server it cannot trust.
    # Weaker modes are for a test or a lab that sets them explicitly.
    sslmode: str = "verify-full"
    sslrootcert: Path = Path(conventions.REGISTRY_CA_PATH)
    connect_timeout_s: int = 3
    # Every registry call waits at most this long: a migration or an open admin transaction
    # holding a lock fails the call (retried on the next round) instead of stalling the
    # agent's one registry thread, whose snapshot reads drive enforcement. The snapshot of
    # 100,000 devices takes about 1 s.
    statement_timeout_s: float = 10.0
    lock_timeout_s: float = 3.0

    def conninfo(self, application_name: str) -> str:
        """libpq connection string; TCP keepalives notice a registry that vanished, and the
        server applies the statement and lock timeouts to every statement of the session."""
        base = conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            sslmode=self.sslmode,
            sslrootcert=str(self.sslrootcert),
        )
        return make_conninfo(
            base,
            application_name=application_name,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            options=f"-c statement_timeout={_ms(self.statement_timeout_s)}"
            f" -c lock_timeout={_ms(self.lock_timeout_s)}",
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))  # 0 would mean no timeout at all


@dataclass(frozen=True)
class InstanceConfig:
    name: str
    management: Path
    tun: str


@dataclass(frozen=True)
class AgentConfig:
    gateway: str
    registry: RegistryConfig
    instances: tuple[InstanceConfig, ...]
    http_listen: tuple[str, int] = ("0.0.0.0", conventions.AGENT_HTTP_PORT)  # noqa: S104 - health check
    state_path: Path = Path(conventions.AGENT_STATE_PATH)
    crl_dir: Path = Path(conventions.CRL_DIR)
    netmask: str = conventions.tunnel_netmask()
    # Changes are read when the registry notifies them; without a notification, every
    # snapshot_interval_s (a lost one delays a change by at most that), and everything every
    # full_read_interval_s (a certificate stops being current by the clock alone).
    snapshot_interval_s: float = 30.0
    full_read_interval_s: float = 600.0
    # A snapshot older than this (the registry away that long) makes /healthz answer 503: the
    # revocations it has not seen are what a stale gateway would let in.
    snapshot_max_age_s: float = 300.0
    reconcile_interval_s: float = 30.0
    drain_rate_per_s: float = 50.0
    tunnel: TunnelSettings | None = None  # the [tunnel] table: no table, no tunnel service
    # The [renewal] table: devices renew their certificates through their tunnels (no table,
    # no renewal endpoint).
    renewal: RenewalSettings | None = None
    # The PKI files openvpn_gateway installs, watched for their expiry (/metrics only).
    certificate_file: Path = Path(conventions.GATEWAY_PKI_DIR) / "server.crt"
    ca_file: Path = Path(conventions.GATEWAY_PKI_DIR) / "ca.pem"
    crl_file: Path = Path(conventions.GATEWAY_PKI_DIR) / "crl.pem"

    @property
    def control_socket(self) -> Path:
        """Where the running agent takes `drain` requests: beside its state, root only."""
        return self.state_path.with_name("agent.sock")


def _defaults(cls: type) -> dict[str, Any]:
    """A dataclass's field defaults: the one place each default is stated."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


_AGENT = _defaults(AgentConfig)
_REGISTRY = _defaults(RegistryConfig)
_TOP_KEYS = {f.name for f in fields(AgentConfig)}
_REGISTRY_KEYS = {f.name for f in fields(RegistryConfig)}
_INSTANCE_KEYS = {f.name for f in fields(InstanceConfig)}
_TUNNEL = _defaults(TunnelSettings)
_TUNNEL_KEYS = {f.name for f in fields(TunnelSettings)}
_RENEWAL = _defaults(RenewalSettings)
_RENEWAL_KEYS = {f.name for f in fields(RenewalSettings)}


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the agent's TOML file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the agent configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))


def parse_config(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    """Validate a parsed TOML document; errors start with source and name key and value."""
    check = _Checker(source)
    check.known(data, _TOP_KEYS, "")
    registry = check.table(data, "registry")
    check.known(registry, _REGISTRY_KEYS, "registry.")
    instances = data.get("instances")
    if not isinstance(instances, list) or not instances:
        check.fail("instances", instances, "must be a non-empty array of [[instances]] tables")
    parsed = tuple(check.instance(item, i) for i, item in enumerate(instances))
    for attr in ("name", "management", "tun"):
        seen: set[object] = set()
        for i, inst in enumerate(parsed):
            value = getattr(inst, attr)
            if value in seen:
                check.fail(f"instances[{i}].{attr}", str(value), "is used by another instance")
            seen.add(value)
    password = registry.get("password", "")
    if not isinstance(password, str):
        # Never echo it, not even when it has the wrong type.
        raise ConfigError(f"{source}: registry.password must be a string")
    return AgentConfig(
        gateway=check.gateway(data.get("gateway")),
        registry=RegistryConfig(
            host=check.text(registry, "host", "registry.", required=True),
            password=password,
            port=check.port(registry, "port", "registry.", _REGISTRY["port"]),
            dbname=check.text(registry, "dbname", "registry.", _REGISTRY["dbname"]),
            user=check.text(registry, "user", "registry.", _REGISTRY["user"]),
            sslmode=check.choice(registry, "sslmode", "registry.", SSLMODES, _REGISTRY["sslmode"]),
            sslrootcert=check.path(
                registry, "sslrootcert", str(_REGISTRY["sslrootcert"]), "registry."
            ),
            connect_timeout_s=int(
                check.number(
                    registry,
                    "connect_timeout_s",
                    "registry.",
                    _REGISTRY["connect_timeout_s"],
                    minimum=1,
                    integer=True,
                )
            ),
            statement_timeout_s=check.number(
                registry, "statement_timeout_s", "registry.", _REGISTRY["statement_timeout_s"]
            ),
            lock_timeout_s=check.number(
                registry, "lock_timeout_s", "registry.", _REGISTRY["lock_timeout_s"]
            ),
        ),
        instances=parsed,
        http_listen=check.listen(data.get("http_listen", "{}:{}".format(*_AGENT["http_listen"]))),
        state_path=check.path(data, "state_path", str(_AGENT["state_path"])),
        crl_dir=check.path(data, "crl_dir", str(_AGENT["crl_dir"])),
        netmask=check.netmask(data.get("netmask", _AGENT["netmask"])),
        snapshot_interval_s=check.number(
            data, "snapshot_interval_s", "", _AGENT["snapshot_interval_s"]
        ),
        full_read_interval_s=check.number(
            data, "full_read_interval_s", "", _AGENT["full_read_interval_s"]
        ),
        snapshot_max_age_s=check.number(
            data, "snapshot_max_age_s", "", _AGENT["snapshot_max_age_s"]
        ),
        reconcile_interval_s=check.number(
            data, "reconcile_interval_s", "", _AGENT["reconcile_interval_s"]
        ),
        drain_rate_per_s=check.number(data, "drain_rate_per_s", "", _AGENT["drain_rate_per_s"]),
        tunnel=check.tunnel(data["tunnel"]) if "tunnel" in data else None,
        renewal=check.renewal(data["renewal"]) if "renewal" in data else None,
        certificate_file=check.path(data, "certificate_file", str(_AGENT["certificate_file"])),
        ca_file=check.path(data, "ca_file", str(_AGENT["ca_file"])),
        crl_file=check.path(data, "crl_file", str(_AGENT["crl_file"])),
    )


class _Checker:
    """Field checks that fail with `<source>: <key> = <value>: <reason>`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: object, reason: str) -> None:
        raise ConfigError(f"{self.source}: {key} = {value!r}: {reason}")

    def known(self, table: dict[str, Any], keys: set[str], prefix: str) -> None:
        for key in table:
            if key not in keys:
                # No value in this message: a misspelt key may hold the password.
                raise ConfigError(
                    f"{self.source}: unknown key {prefix}{key} (known: {', '.join(sorted(keys))})"
                )

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key)
        if not isinstance(value, dict):
            self.fail(key, value, f"must be a [{key}] table")
        return value

    def text(
        self, table: dict[str, Any], key: str, prefix: str, default: str | None = None,
        *, required: bool = False,
    ) -> str:  # fmt: skip
        value = table.get(key, None if required else default)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{prefix}{key}", value, "must be a non-empty string")
        return value

    def choice(
        self, table: dict[str, Any], key: str, prefix: str, choices: tuple[str, ...], default: str
    ) -> str:
        value = table.get(key, default)
        if value not in choices:
            self.fail(f"{prefix}{key}", value, f"use one of {', '.join(choices)}")
        return value

    def number(
        self, table: dict[str, Any], key: str, prefix: str, default: float,
        *, minimum: float = 0, integer: bool = False,
    ) -> float:  # fmt: skip
        value = table.get(key, default)
        if isinstance(value, bool):
            ok = False
        elif integer:
            ok = isinstance(value, int) and value >= minimum
        else:
            ok = isinstance(value, int | float) and value > minimum
        if not ok:
            need = f"an integer >= {minimum:g}" if integer else f"a number > {minimum:g}"
            self.fail(f"{prefix}{key}", value, f"must be {need}")
        return float(value)

    def port(self, table: dict[str, Any], key: str, prefix: str, default: int) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            self.fail(f"{prefix}{key}", value, "must be a TCP port (1-65535)")
        return value

    def path(self, table: dict[str, Any], key: str, default: str | None, prefix: str = "") -> Path:
        value = table.get(key, default)
        if not isinstance(value, str) or not value.startswith("/"):
            self.fail(f"{prefix}{key}", value, "must be an absolute path")
        return Path(value)

    def gateway(self, value: object) -> str:
        try:
            validation.gateway_name(value)
        except InvalidValue as exc:
            self.fail("gateway", value, exc.reason)
        return str(value)

    def listen(self, value: object, key: str = "http_listen") -> tuple[str, int]:
        host, sep, port = str(value).rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            ok = isinstance(value, str) and sep and port.isdigit() and 0 < int(port) < 65536
        except ValueError:
            ok = False
        if not ok:
            self.fail(key, value, "use ADDRESS:PORT, e.g. 0.0.0.0:8089 or [::]:8089")
        return host, int(port)

    def tunnel(self, table: object) -> TunnelSettings:
        if not isinstance(table, dict):
            self.fail("tunnel", table, "must be a [tunnel] table")
        self.known(table, _TUNNEL_KEYS, "tunnel.")
        ports = table.get("device_ports")
        if (
            not isinstance(ports, list)
            or not ports
            or any(
                isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536 for p in ports
            )
        ):
            self.fail("tunnel.device_ports", ports, "must be a non-empty array of TCP ports")
        return TunnelSettings(
            listen=self.listen(
                table.get("listen", "{}:{}".format(*_TUNNEL["listen"])), "tunnel.listen"
            ),
            cert=str(self.path(table, "cert", None, "tunnel.")),
            key=str(self.path(table, "key", None, "tunnel.")),
            ca=str(self.path(table, "ca", None, "tunnel.")),
            device_ports=tuple(ports),
            connect_timeout_s=self.number(
                table, "connect_timeout_s", "tunnel.", _TUNNEL["connect_timeout_s"]
            ),
            head_timeout_s=self.number(
                table, "head_timeout_s", "tunnel.", _TUNNEL["head_timeout_s"]
            ),
            max_tunnels=int(
                self.number(
                    table, "max_tunnels", "tunnel.", _TUNNEL["max_tunnels"], minimum=1, integer=True
                )
            ),
        )

    def renewal(self, table: object) -> RenewalSettings:
        if not isinstance(table, dict):
            self.fail("renewal", table, "must be a [renewal] table")
        self.known(table, _RENEWAL_KEYS, "renewal.")
        url = self.text(table, "api_url", "renewal.", required=True)
        if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d{1,5})?/?", url):
            self.fail("renewal.api_url", url, "use https://HOST[:PORT] (the API's HTTPS listener)")
        ca = table.get("ca")
        number = lambda key, **kw: self.number(table, key, "renewal.", _RENEWAL[key], **kw)  # noqa: E731
        return RenewalSettings(
            api_url=url,
            cert=str(self.path(table, "cert", None, "renewal.")),
            key=str(self.path(table, "key", None, "renewal.")),
            ca=None if ca is None else str(self.path(table, "ca", None, "renewal.")),
            listen=self.listen(
                table.get("listen", "{}:{}".format(*_RENEWAL["listen"])), "renewal.listen"
            ),
            timeout_s=number("timeout_s"),
            read_timeout_s=number("read_timeout_s"),
            max_body_bytes=int(number("max_body_bytes", minimum=1024, integer=True)),
            max_in_flight=int(number("max_in_flight", minimum=1, integer=True)),
        )

    def netmask(self, value: object) -> str:
        try:
            net = ipaddress.IPv4Network(f"0.0.0.0/{value}")
            ok = isinstance(value, str) and str(net.netmask) == value
        except ValueError:
            ok = False
        if not ok:
            self.fail("netmask", value, "must be a dotted IPv4 netmask such as 255.192.0.0")
        return str(value)

    def instance(self, item: object, index: int) -> InstanceConfig:
        prefix = f"instances[{index}]."
        if not isinstance(item, dict):
            self.fail(f"instances[{index}]", item, "must be a table with name, management, tun")
        self.known(item, _INSTANCE_KEYS, prefix)
        name = self.text(item, "name", prefix, required=True)
        if not _INSTANCE_RE.fullmatch(name):
            self.fail(f"{prefix}name", name, "use letters, digits, '.', '_', '@' and '-'")
        management = self.text(item, "management", prefix, required=True)
        if not management.startswith("/"):
            self.fail(f"{prefix}management", management, "must be the absolute path of a socket")
        tun = self.text(item, "tun", prefix, required=True)
        if not _IFNAME_RE.fullmatch(tun):
            self.fail(f"{prefix}tun", tun, "must be a network interface name (at most 15 chars)")
        return InstanceConfig(name, Path(management), tun)

"""Stack configuration, read and checked in plain Python before any resource is declared.

Every size and count lives in Pulumi.<stack>.yaml; this module turns that mapping into frozen
settings or raises InvalidValue naming the key and the bad value, so `pulumi preview` stops
with one clear line instead of a half-built stack.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conventions import VPN_POOL

from iotistic_vpn.errors import InvalidValue
from iotistic_vpn.validation import ip_network

__all__ = [
    "SECTIONS",
    "ApiSettings",
    "DatabaseSettings",
    "DnsSettings",
    "GatewaySettings",
    "NetworkSettings",
    "PkiSettings",
    "StackSettings",
    "check_zones",
    "load",
]

# Top-level keys of the project's namespace in Pulumi.<stack>.yaml.
SECTIONS = ("production", "network", "dns", "gateways", "database", "pki", "api")

# Instance families the gateway image exists for, by CPU architecture of the Debian 12 AMI.
GATEWAY_FAMILIES = {
    "x86_64": ("t3", "t3a", "m5", "m5a", "m6i", "m6a", "m7i", "m7a", "c5", "c5a", "c5n", "c6i",
               "c6a", "c6in", "c7i", "c7a"),
    "arm64": ("t4g", "m6g", "m7g", "m8g", "c6g", "c6gn", "c7g", "c7gn", "c8g"),
}  # fmt: skip
DATABASE_FAMILIES = ("t3", "t4g", "m5", "m6g", "m6i", "m7g", "r5", "r6g", "r6i", "r7g")
POSTGRES_MAJORS = ("15", "16", "17")
_SIZE = r"(?:nano|micro|small|medium|large|xlarge|[1-9][0-9]?xlarge|metal)"
_INSTANCE_TYPE_RE = re.compile(rf"([a-z][a-z0-9]*)\.({_SIZE})")
_DB_CLASS_RE = re.compile(rf"db\.([a-z][a-z0-9]*)\.({_SIZE})")

# Fargate accepts only these CPU units, each with its own memory range (MiB) and step.
FARGATE_MEMORY = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
}
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827)
PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)

# 15 characters at most: "iotistic-vpn-<stack>-api" must fit a load balancer name (32).
_STACK_RE = re.compile(r"[a-z][a-z0-9-]{1,14}")
_DOMAIN_RE = re.compile(r"(?=.{4,200}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
# These two land in a shell command line in the gateways' user data: no quoting characters.
_REPO_URL_RE = re.compile(r"(?:https://|ssh://|git@)[A-Za-z0-9._~:/@%+-]+")
_GIT_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_SSH_KEY_RE = re.compile(r"(?:ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/]+=*(?: \S+)?")
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._:/-]*(?::[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})")
_PATH_RE = re.compile(r"/[A-Za-z0-9._/-]*")
_ENGINE_RE = re.compile(r"(\d+)(?:\.\d+)?")


@dataclass(frozen=True)
class NetworkSettings:
    """VPC range, zone count and NAT gateways; subnets are carved from the range."""

    cidr: ipaddress.IPv4Network
    az_count: int
    nat_gateways: int
    public_subnets: tuple[str, ...]
    private_subnets: tuple[str, ...]


@dataclass(frozen=True)
class DnsSettings:
    """The Route 53 zone the stack's names live in."""

    zone: str

    @property
    def vpn_hostname(self) -> str:
        """Name the devices' `remote` lines use: the gateways' load balancer."""
        return f"vpn.{self.zone}"

    @property
    def api_hostname(self) -> str:
        """Name of the cloud API (HTTPS)."""
        return f"api.{self.zone}"

    @property
    def tunnel_hostname(self) -> str:
        """Name of the cloud API's CONNECT tunnel (TLS)."""
        return f"tunnel.{self.zone}"

    @property
    def renewal_hostname(self) -> str:
        """Name of the cloud API's own HTTPS listener, for the gateways only (private addresses)."""
        return f"renew.{self.zone}"


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway autoscaling group, its boot and its scaling targets."""

    instance_type: str
    architecture: str  # x86_64 or arm64, from the instance family
    min_size: int
    desired_capacity: int
    max_size: int
    root_volume_gb: int
    health_check_grace_seconds: int
    drain_seconds: int
    target_cpu_percent: int
    target_devices_per_gateway: int
    repo_url: str
    git_revision: str
    ssh_public_key: str


@dataclass(frozen=True)
class DatabaseSettings:
    """RDS PostgreSQL for the device registry."""

    instance_class: str
    engine_version: str
    parameter_family: str
    allocated_storage_gb: int
    max_allocated_storage_gb: int
    multi_az: bool
    backup_retention_days: int
    deletion_protection: bool


@dataclass(frozen=True)
class PkiSettings:
    """Retention of the CA key, its KMS key and old CRL versions."""

    secret_recovery_days: int
    kms_deletion_days: int
    crl_noncurrent_days: int


@dataclass(frozen=True)
class ApiSettings:
    """The cloud API on ECS Fargate behind an HTTPS load balancer."""

    image: str
    cpu: int
    memory: int
    desired_count: int
    max_count: int
    target_cpu_percent: int
    log_retention_days: int
    health_check_path: str
    # Zero-touch enrollment (POST /v1/enroll): the task gets the issuing CA and the fleet's
    # tls-crypt-v2 server key from Secrets Manager, the gateways' name as its remotes.
    enrollment: bool


@dataclass(frozen=True)
class StackSettings:
    """Everything the program needs, validated."""

    stack: str
    region: str
    production: bool
    network: NetworkSettings
    dns: DnsSettings
    gateways: GatewaySettings
    database: DatabaseSettings
    pki: PkiSettings
    api: ApiSettings

    @property
    def name_prefix(self) -> str:
        """Prefix of physical names: iotistic-vpn-<stack>."""
        return f"iotistic-vpn-{self.stack}"

    @property
    def secret_prefix(self) -> str:
        """Path under which the stack's Secrets Manager secrets live."""
        return f"iotistic-vpn/{self.stack}"


class _Section:
    """One config section: typed getters that name `section.key`, then a check for typos."""

    def __init__(self, raw: Mapping[str, Any], name: str) -> None:
        value = raw.get(name)
        if value is None:
            raise InvalidValue(name, None, _missing(name))
        if not isinstance(value, Mapping):
            raise InvalidValue(name, value, "must be a mapping of keys")
        self.name = name
        self.values = value
        self.read: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.name}.{key}"

    def get(self, key: str) -> Any:
        self.read.add(key)
        if key not in self.values or self.values[key] is None:
            raise InvalidValue(self.field(key), None, _missing(self.field(key)))
        return self.values[key]

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.get(key)
        # bool is an int subclass; `true` for a count is a typo, not 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidValue(self.field(key), value, "must be a whole number")
        if not low <= value <= high:
            raise InvalidValue(self.field(key), value, f"must be between {low} and {high}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise InvalidValue(self.field(key), value, "must be true or false")
        return value

    def text(self, key: str, pattern: re.Pattern[str], rule: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise InvalidValue(self.field(key), value, rule)
        return value

    def done(self) -> None:
        unknown = sorted(set(self.values) - self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            raise InvalidValue(self.field(unknown[0]), self.values[unknown[0]], f"unknown key; "
                               f"{self.name} takes {known}")  # fmt: skip


def _missing(field: str) -> str:
    return f"missing; set it with `pulumi config set --path {field} VALUE`"


def _network(raw: Mapping[str, Any]) -> NetworkSettings:
    s = _Section(raw, "network")
    cidr = ip_network(s.get("cidr"), field="network.cidr")
    if cidr.overlaps(VPN_POOL):
        raise InvalidValue(
            "network.cidr", str(cidr), f"overlaps the VPN address pool {VPN_POOL}; devices "
            "would be unreachable behind it: pick a range inside 10.0.0.0/8, 172.16.0.0/12 or "
            "192.168.0.0/16"
        )  # fmt: skip
    if not any(cidr.subnet_of(r) for r in PRIVATE_RANGES):
        raise InvalidValue("network.cidr", str(cidr), "must lie inside a private (RFC 1918) range")
    if not 16 <= cidr.prefixlen <= 20:
        raise InvalidValue("network.cidr", str(cidr), "prefix must be between /16 and /20")
    # Two zones at least: RDS Multi-AZ and the load balancers refuse a single zone.
    az_count = s.integer("azCount", 2, 6)
    nat = s.integer("natGateways", 1, 6)
    if nat > az_count:
        raise InvalidValue("network.natGateways", nat, f"cannot exceed azCount ({az_count})")
    s.done()
    # Sixteen equal blocks: the first eight for public subnets, the last eight for private ones.
    blocks = list(cidr.subnets(new_prefix=cidr.prefixlen + 4))
    return NetworkSettings(
        cidr=cidr,
        az_count=az_count,
        nat_gateways=nat,
        public_subnets=tuple(str(b) for b in blocks[:az_count]),
        private_subnets=tuple(str(b) for b in blocks[8 : 8 + az_count]),
    )


def _instance_family(field: str, value: object) -> tuple[str, str]:
    match = _INSTANCE_TYPE_RE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise InvalidValue(field, value, "must look like FAMILY.SIZE, for example t3.small")
    family = match.group(1)
    for arch, families in GATEWAY_FAMILIES.items():
        if family in families:
            return family, arch
    known = ", ".join(f for fams in GATEWAY_FAMILIES.values() for f in fams)
    raise InvalidValue(field, value, f"unknown instance type family {family!r}; use one of {known}")


def _gateways(raw: Mapping[str, Any]) -> GatewaySettings:
    s = _Section(raw, "gateways")
    instance_type = s.get("instanceType")
    _, arch = _instance_family("gateways.instanceType", instance_type)
    min_size = s.integer("minSize", 1, 1000)
    desired = s.integer("desiredCapacity", 1, 1000)
    max_size = s.integer("maxSize", 1, 1000)
    if min_size > max_size:
        raise InvalidValue(
            "gateways.minSize", min_size, f"must not exceed gateways.maxSize ({max_size})"
        )
    if not min_size <= desired <= max_size:
        raise InvalidValue(
            "gateways.desiredCapacity",
            desired,
            f"must lie between gateways.minSize ({min_size}) and gateways.maxSize ({max_size})",
        )
    settings = GatewaySettings(
        instance_type=instance_type,
        architecture=arch,
        min_size=min_size,
        desired_capacity=desired,
        max_size=max_size,
        root_volume_gb=s.integer("rootVolumeGb", 8, 512),
        health_check_grace_seconds=s.integer("healthCheckGraceSeconds", 60, 3600),
        drain_seconds=s.integer("drainSeconds", 0, 3600),
        target_cpu_percent=s.integer("targetCpuPercent", 10, 90),
        target_devices_per_gateway=s.integer("targetDevicesPerGateway", 10, 100_000),
        repo_url=s.text(
            "repoUrl", _REPO_URL_RE, "must be an https://, ssh:// or git@ URL, no spaces or quotes"
        ),
        git_revision=s.text(
            "gitRevision",
            _GIT_REVISION_RE,
            "must be a commit, tag or branch name (letters, digits, . _ / -)",
        ),
        ssh_public_key=s.text(
            "sshPublicKey", _SSH_KEY_RE, "must be one OpenSSH public key line (ed25519, ecdsa, rsa)"
        ),
    )
    s.done()
    return settings


def _database(raw: Mapping[str, Any]) -> DatabaseSettings:
    s = _Section(raw, "database")
    instance_class = s.get("instanceClass")
    match = _DB_CLASS_RE.fullmatch(instance_class) if isinstance(instance_class, str) else None
    if not match:
        raise InvalidValue(
            "database.instanceClass", instance_class, "must look like db.FAMILY.SIZE (db.t4g.micro)"
        )
    if match.group(1) not in DATABASE_FAMILIES:
        raise InvalidValue(
            "database.instanceClass",
            instance_class,
            f"unknown instance type family {match.group(1)!r}; use one of "
            + ", ".join(DATABASE_FAMILIES),
        )
    version = s.get("engineVersion")
    version_match = _ENGINE_RE.fullmatch(version) if isinstance(version, str) else None
    if not version_match or version_match.group(1) not in POSTGRES_MAJORS:
        raise InvalidValue(
            "database.engineVersion",
            version,
            "must be a quoted PostgreSQL version with major " + ", ".join(POSTGRES_MAJORS),
        )
    allocated = s.integer("allocatedStorageGb", 20, 65536)
    max_allocated = s.integer("maxAllocatedStorageGb", 20, 65536)
    if max_allocated < allocated:
        raise InvalidValue(
            "database.maxAllocatedStorageGb",
            max_allocated,
            f"must be at least database.allocatedStorageGb ({allocated})",
        )
    settings = DatabaseSettings(
        instance_class=instance_class,
        engine_version=version,
        parameter_family=f"postgres{version_match.group(1)}",
        allocated_storage_gb=allocated,
        max_allocated_storage_gb=max_allocated,
        multi_az=s.boolean("multiAz"),
        backup_retention_days=s.integer("backupRetentionDays", 0, 35),
        deletion_protection=s.boolean("deletionProtection"),
    )
    s.done()
    return settings


def _pki(raw: Mapping[str, Any]) -> PkiSettings:
    s = _Section(raw, "pki")
    settings = PkiSettings(
        secret_recovery_days=s.integer("secretRecoveryDays", 7, 30),
        kms_deletion_days=s.integer("kmsDeletionDays", 7, 30),
        crl_noncurrent_days=s.integer("crlNoncurrentDays", 1, 3650),
    )
    s.done()
    return settings


def _api(raw: Mapping[str, Any]) -> ApiSettings:
    s = _Section(raw, "api")
    image = s.text("image", _IMAGE_RE, "must name an image with a pinned tag or @sha256 digest")
    if image.endswith(":latest"):
        raise InvalidValue("api.image", image, "pin a version or digest, not :latest")
    cpu = s.integer("cpu", 256, 4096)
    if cpu not in FARGATE_MEMORY:
        raise InvalidValue("api.cpu", cpu, f"Fargate takes {', '.join(map(str, FARGATE_MEMORY))}")
    memory = s.integer("memory", 512, 30720)
    if memory not in FARGATE_MEMORY[cpu]:
        allowed = FARGATE_MEMORY[cpu]
        raise InvalidValue(
            "api.memory",
            memory,
            f"Fargate with api.cpu {cpu} takes one of {', '.join(map(str, allowed))} MiB",
        )
    desired = s.integer("desiredCount", 1, 100)
    max_count = s.integer("maxCount", 1, 100)
    if desired > max_count:
        raise InvalidValue("api.desiredCount", desired, f"must not exceed maxCount ({max_count})")
    retention = s.integer("logRetentionDays", 1, 1827)
    if retention not in LOG_RETENTION_DAYS:
        raise InvalidValue(
            "api.logRetentionDays",
            retention,
            "CloudWatch takes " + ", ".join(map(str, LOG_RETENTION_DAYS)),
        )
    settings = ApiSettings(
        image=image,
        cpu=cpu,
        memory=memory,
        desired_count=desired,
        max_count=max_count,
        target_cpu_percent=s.integer("targetCpuPercent", 10, 90),
        log_retention_days=retention,
        health_check_path=s.text("healthCheckPath", _PATH_RE, "must be an absolute URL path"),
        enrollment=s.boolean("enrollment"),
    )
    s.done()
    return settings


def _production_rules(settings: StackSettings) -> None:
    """A production stack must survive a zone and keep its data; refuse anything less."""
    rules = [
        ("database.multiAz", settings.database.multi_az, settings.database.multi_az, "true"),
        (
            "database.deletionProtection",
            settings.database.deletion_protection,
            settings.database.deletion_protection,
            "true",
        ),
        (
            "database.backupRetentionDays",
            settings.database.backup_retention_days,
            settings.database.backup_retention_days >= 7,
            "at least 7",
        ),
        (
            "network.natGateways",
            settings.network.nat_gateways,
            settings.network.nat_gateways == settings.network.az_count,
            f"one per zone ({settings.network.az_count})",
        ),
        (
            "gateways.minSize",
            settings.gateways.min_size,
            settings.gateways.min_size >= settings.network.az_count,
            f"at least one gateway per zone ({settings.network.az_count})",
        ),
        ("api.desiredCount", settings.api.desired_count, settings.api.desired_count >= 2, "2+"),
    ]
    for field, value, ok, wanted in rules:
        if not ok:
            raise InvalidValue(field, value, f"a production stack needs {wanted}")


def load(raw: Mapping[str, Any], *, stack: str, region: str) -> StackSettings:
    """Validate one stack's config mapping; raise InvalidValue on the first fault."""
    if not isinstance(stack, str) or not _STACK_RE.fullmatch(stack):
        raise InvalidValue("stack", stack, "use 2-15 lower-case letters, digits and hyphens")
    if not region:
        raise InvalidValue("aws:region", region, "set it with `pulumi config set aws:region ...`")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise InvalidValue(unknown[0], raw[unknown[0]], f"unknown key; use {', '.join(SECTIONS)}")
    production = raw.get("production")
    if not isinstance(production, bool):
        raise InvalidValue("production", production, "must be true or false")
    dns = _Section(raw, "dns")
    zone = dns.text("zone", _DOMAIN_RE, "must be a DNS zone name such as vpn.example.com")
    dns.done()
    settings = StackSettings(
        stack=stack,
        region=region,
        production=production,
        network=_network(raw),
        dns=DnsSettings(zone=zone),
        gateways=_gateways(raw),
        database=_database(raw),
        pki=_pki(raw),
        api=_api(raw),
    )
    if production:
        _production_rules(settings)
    return settings


def check_zones(settings: StackSettings, available: Sequence[str]) -> tuple[str, ...]:
    """Return the zones to use, or raise InvalidValue if the region has too few."""
    wanted = settings.network.az_count
    if len(available) < wanted:
        raise InvalidValue(
            "network.azCount",
            wanted,
            f"region {settings.region} has only {len(available)} available zones "
            f"({', '.join(available)})",
        )
    return tuple(sorted(available)[:wanted])

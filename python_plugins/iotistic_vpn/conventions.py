"""The names every part of the project shares, in one machine-readable home.

Python imports these; the roles read them through the repository's own lookup and filter
plugins (`iotistic_vpn_conventions`, `iotistic_vpn_gateway_instances`); infra/ imports them.
Anything derived from them (the gateways' /24, the tunnel netmask, one gateway's instance
layout) is computed here too, so a non-default pool or instance count changes every consumer
together. Standard library only: gateways import this without cryptography.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass

from .identifiers import CUSTOMER_ID_PATTERN, DEVICE_ID_PATTERN, DEVICE_URN_PREFIX

__all__ = [
    "AGENT_CONFIG_PATH",
    "AGENT_HTTP_PORT",
    "AGENT_STATE_PATH",
    "API_CONNECT_PORT",
    "API_CONTAINER_PORT",
    "API_PUBLIC_PORT",
    "API_TLS_PORT",
    "CRL_DIR",
    "CUSTOMER_BLOCK_PREFIX",
    "CUSTOMER_ID_PATTERN",
    "DATABASE_NAME",
    "DEVICE_AGENT_PORT",
    "DEVICE_ID_PATTERN",
    "DEVICE_STATES",
    "DEVICE_TUNNEL_INTERFACE",
    "DEVICE_URN_PREFIX",
    "GATEWAY_NETWORK_PREFIX",
    "GATEWAY_PKI_DIR",
    "GATEWAY_SECRET_KEYS",
    "INSTANCE_BASE_PORT",
    "MANAGEMENT_DIR",
    "OPENVPN_PORT",
    "POSTGRES_PORT",
    "REGISTRY_API_ROLE",
    "REGISTRY_CA_PATH",
    "REGISTRY_GATEWAY_ROLE",
    "REGISTRY_OPERATOR_ROLE",
    "RENEWAL_CLIENT_EKU",
    "RENEW_PATH",
    "RENEW_PORT",
    "REVOCATION_REASONS",
    "REVOKED_DEVICES_DIR",
    "STATE_DIR",
    "TUNNEL_CLIENT_EKU",
    "TUNNEL_CLIENT_ORGANIZATION",
    "TUNNEL_SERVICE_MARK",
    "TUNNEL_SERVICE_PORT",
    "VPN_POOL",
    "GatewayInstance",
    "as_dict",
    "gateway_instances",
    "gateway_network",
    "instance_dicts",
    "tunnel_netmask",
]

# -- addresses ---------------------------------------------------------------------------------
# RFC 6598 shared space: no clash with the LANs devices sit on.
VPN_POOL = "100.64.0.0/10"
# Each customer owns one block of the pool (a /20: 4,093 devices; 1,023 customers).
CUSTOMER_BLOCK_PREFIX = 20
# The pool's top /24 carries the gateways' own tunnel addresses and is never a customer's.
GATEWAY_NETWORK_PREFIX = 24

# -- identifiers -------------------------------------------------------------------------------
# DEVICE_ID_PATTERN, CUSTOMER_ID_PATTERN and DEVICE_URN_PREFIX live in identifiers.py (imported
# above), which imports nothing: the gateways' tls-crypt-v2-verify script reads only that.

DEVICE_STATES = ("provisioned", "active", "revoked")
# RFC 5280 reasons that end a certificate, as cryptography's x509.ReasonFlags names. Not
# certificate_hold: a revocation here is final (a serial once revoked stays revoked), and not
# remove_from_crl, which belongs to delta CRLs.
REVOCATION_REASONS = (
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
    "aa_compromise",
)

# -- ports -------------------------------------------------------------------------------------
OPENVPN_PORT = 1194  # UDP, the only gateway port facing the internet
INSTANCE_BASE_PORT = 11940  # instance i listens on UDP 11940 + i; nftables spreads 1194 over them
AGENT_HTTP_PORT = 8089  # the gateway agent's /healthz and /metrics
TUNNEL_SERVICE_PORT = 8443  # mutual TLS from the cloud API only
# The agent's renewal endpoint, on the gateway's first tunnel address (tun side only): a device
# renews its certificate through its tunnel (docs/enrollment.md, "Renewal through the tunnel").
RENEW_PORT = 8090
RENEW_PATH = "/v1/renewal"
DEVICE_AGENT_PORT = 48484  # the device's local agent API, on its VPN address
# The device's OpenVPN interface: its firewall takes the agent API and SSH only on it.
DEVICE_TUNNEL_INTERFACE = "iotistic0"
# The firewall mark (SO_MARK) the tunnel service puts on its sockets to devices: the gateway's
# nftables accepts a new connection to a device only with it, so no other local process (the
# agent runs as root, and cgroup matching needs cgroup v2) can open one.
TUNNEL_SERVICE_MARK = 0x4956  # "IV"
API_PUBLIC_PORT = 443
API_CONTAINER_PORT = 8000
# The API's HTTP CONNECT tunnel (open-balena-vpn's 3128), in the container and, behind a TLS
# load balancer, outside.
API_CONNECT_PORT = 3128
# The API's own HTTPS listener (IOTISTIC_API_TLS_LISTEN), where a gateway's renewal client
# certificate reaches POST /v1/renewals: TLS ends in the API, never in a load balancer (in the
# cloud an internal network load balancer passes the TCP stream through, docs/cloud.md). Not
# TUNNEL_SERVICE_PORT, so the firewall's rules for the two read apart.
API_TLS_PORT = 9443
POSTGRES_PORT = 5432
DATABASE_NAME = "iotistic_vpn"
# The registry's group roles (NOLOGIN, migration 0007): every login but the owner's is a member
# of one, and holds exactly what that part's queries need.
REGISTRY_GATEWAY_ROLE = "iotistic_gateway"
REGISTRY_API_ROLE = "iotistic_api"
REGISTRY_OPERATOR_ROLE = "iotistic_operator"
# Where a gateway or API host keeps the root its registry connection verifies the server with.
REGISTRY_CA_PATH = "/etc/iotistic-vpn/registry-ca.pem"

# -- PKI ---------------------------------------------------------------------------------------
# The cloud API's tunnel client certificate: clientAuth plus this extended key usage, which
# marks its role for any verifier (a 2.25 UUID OID, minted without a registry: ITU-T X.667)...
TUNNEL_CLIENT_EKU = "2.25.1892603378506917492182520152726709395"
# ... and this subject organization, which no customer id can spell (ids have no spaces or
# capitals), so no device certificate carries it: what the gateways check, standard library only.
TUNNEL_CLIENT_ORGANIZATION = "Iotistic VPN tunnel client"
# A gateway's renewal client certificate (its own key, a second certificate): clientAuth plus
# this extended key usage, the one credential the API's POST /v1/renewals takes. No device
# certificate carries it, and the gateway's server certificate (serverAuth only) cannot be a
# TLS client: OpenSSL refuses it ("unsuitable certificate purpose").
RENEWAL_CLIENT_EKU = "2.25.11487001350611501323411429271517277093"

# -- files on a gateway ------------------------------------------------------------------------
GATEWAY_PKI_DIR = "/etc/openvpn/server/iotistic"
MANAGEMENT_DIR = "/run/openvpn-server"
STATE_DIR = "/var/lib/iotistic-vpn"
# crl-verify DIR dir: one empty file per revoked serial (decimal).
CRL_DIR = f"{STATE_DIR}/crl.d"
# tls-crypt-v2-verify: one empty file per revoked device id, refused before any TLS.
REVOKED_DEVICES_DIR = f"{STATE_DIR}/revoked-devices.d"
AGENT_STATE_PATH = f"{STATE_DIR}/agent.db"
AGENT_CONFIG_PATH = "/etc/iotistic-vpn/gateway-agent.toml"

# -- the cloud ---------------------------------------------------------------------------------
# The JSON keys of each cloud gateway secret (infra makes the containers, roles/cloud_gateway
# publishes and pulls the values). registry.ca is the registry's CA bundle (PEM; RDS's in
# production), the same key as the API's registry secret. server_cert.renewal_cert is the fleet's
# renewal client certificate for the same key, published only where the stack has a renewal
# path (iotistic_vpn_cloud_api_renewal_url).
GATEWAY_SECRET_KEYS = {
    "server_cert": ["cert", "key", "ca_chain", "renewal_cert"],
    "tls_crypt_v2": ["key"],
    "registry": ["user", "password", "host", "port", "dbname", "sslmode", "ca"],
}


def gateway_network(pool: str = VPN_POOL) -> ipaddress.IPv4Network:
    """The pool's top /24 (the whole pool if it is smaller): the gateways' tunnel addresses."""
    net = ipaddress.IPv4Network(pool)
    if net.prefixlen >= GATEWAY_NETWORK_PREFIX:
        return net
    size = 1 << (32 - GATEWAY_NETWORK_PREFIX)
    return ipaddress.IPv4Network((int(net.broadcast_address) + 1 - size, GATEWAY_NETWORK_PREFIX))


def tunnel_netmask(pool: str = VPN_POOL) -> str:
    """Every tun's netmask: the whole pool is on-link, so any device address reaches any tun."""
    return str(ipaddress.IPv4Network(pool).netmask)


@dataclass(frozen=True)
class GatewayInstance:
    """One OpenVPN process of a gateway and everything named after its index."""

    index: int
    name: str  # iotistic-<i>
    unit: str  # openvpn-server@iotistic-<i>.service
    port: int  # local UDP port behind the nftables front
    tun: str
    management: str  # the management socket the agent holds
    address: str  # this instance's tunnel address, in the gateways' /24
    netmask: str


def gateway_instances(count: int, pool: str = VPN_POOL) -> list[GatewayInstance]:
    """The layout of a gateway with `count` OpenVPN instances (one per vCPU by default)."""
    network = gateway_network(pool)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"invalid instance count {count!r}: must be a positive integer")
    if count > network.num_addresses - 2:
        raise ValueError(
            f"invalid instance count {count!r}: the gateways' network {network} holds "
            f"{network.num_addresses - 2} instance addresses"
        )
    netmask = tunnel_netmask(pool)
    return [
        GatewayInstance(
            index=i,
            name=f"iotistic-{i}",
            unit=f"openvpn-server@iotistic-{i}.service",
            port=INSTANCE_BASE_PORT + i,
            tun=f"tun{i}",
            management=f"{MANAGEMENT_DIR}/iotistic-{i}.sock",
            address=str(network.network_address + 1 + i),
            netmask=netmask,
        )
        for i in range(count)
    ]


def as_dict() -> dict[str, object]:
    """Every shared name above, keyed in lower case (what the lookup plugin serves)."""
    names = {name.lower(): globals()[name] for name in __all__ if name.isupper()}
    names["gateway_network"] = str(gateway_network())
    names["tunnel_netmask"] = tunnel_netmask()
    return names


def instance_dicts(count: int, pool: str = VPN_POOL) -> list[dict[str, object]]:
    """gateway_instances() as plain dicts, for templates."""
    return [asdict(inst) for inst in gateway_instances(count, pool)]

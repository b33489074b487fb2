"""The shared names the cloud uses, and the names only the cloud has.

Ports, the VPN pool and the database name come from their one home, iotistic_vpn.conventions
(the Pulumi program runs in the project's venv, which has the package); only the cloud's own
names (tags, roles, metric names, the Debian AMI owner) are kept here.
"""

from __future__ import annotations

import ipaddress

from iotistic_vpn import conventions

PROJECT = "iotistic-vpn"

OPENVPN_PORT = conventions.OPENVPN_PORT  # UDP, the only gateway port that faces the internet
GATEWAY_AGENT_PORT = conventions.AGENT_HTTP_PORT  # TCP, /healthz for the NLB, /metrics
GATEWAY_HEALTH_PATH = "/healthz"
TUNNEL_SERVICE_PORT = conventions.TUNNEL_SERVICE_PORT  # TCP, mutual TLS from the cloud API only
API_PUBLIC_PORT = conventions.API_PUBLIC_PORT
API_CONTAINER_PORT = conventions.API_CONTAINER_PORT
API_CONNECT_PORT = conventions.API_CONNECT_PORT  # TCP, TLS on the tunnel NLB, the CONNECT tunnel
API_TLS_PORT = conventions.API_TLS_PORT  # TCP, passed through the internal renewal NLB
POSTGRES_PORT = conventions.POSTGRES_PORT
DATABASE_NAME = conventions.DATABASE_NAME
GATEWAY_SECRET_KEYS = conventions.GATEWAY_SECRET_KEYS  # the JSON keys of each gateway secret
SSH_PORT = 22  # reached only through the EC2 Instance Connect Endpoint, never from the internet

VPN_POOL = ipaddress.IPv4Network(conventions.VPN_POOL)

ROLES = ("gateway", "registry", "api", "pki", "network")

# The custom CloudWatch metric the gateways publish; the fleet scales on it.
METRIC_NAMESPACE = "IotisticVPN"
CONNECTED_DEVICES_METRIC = "ConnectedDevices"

# Debian's own AWS account publishes the official Debian 12 images.
DEBIAN_AMI_OWNER = "136693071363"
DEBIAN_LOGIN_USER = "admin"


def tags(stack: str, role: str, name: str | None = None) -> dict[str, str]:
    """Return the Project/Stack/Role tags (plus Name) every resource carries."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    result = {"Project": PROJECT, "Stack": stack, "Role": role}
    if name:
        result["Name"] = name
    return result

"""The shared names of docs/conventions.md that the cloud uses: ports, the VPN pool, tags."""

from __future__ import annotations

import ipaddress

PROJECT = "iotistic-vpn"

OPENVPN_PORT = 1194  # UDP, the only gateway port that faces the internet
GATEWAY_AGENT_PORT = 8089  # TCP, /healthz for the NLB health check, /metrics
GATEWAY_HEALTH_PATH = "/healthz"
TUNNEL_SERVICE_PORT = 8443  # TCP, mutual TLS from the cloud API only
API_PUBLIC_PORT = 443
API_CONTAINER_PORT = 8000
POSTGRES_PORT = 5432
DATABASE_NAME = "iotistic_vpn"
SSH_PORT = 22  # reached only through the EC2 Instance Connect Endpoint, never from the internet

VPN_POOL = ipaddress.IPv4Network("100.64.0.0/10")

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

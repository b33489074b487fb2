"""Firewall: every security group and rule of the stack, in one table a reviewer can read.

Three ports face the internet: UDP 1194 (OpenVPN, through the network load balancer, which
keeps the devices' source addresses, so the gateways' group must admit them), TCP 443 (the cloud
API's HTTPS load balancer) and TCP 3128 (the API's CONNECT tunnel, TLS on its own network load
balancer). Everything else is between named groups: the API's own HTTPS listener (TCP 9443, the
gateways' renewals) is reached only by the gateways, through an internal load balancer that
passes TLS through. Operators reach the gateways' SSH only through an EC2 Instance Connect
Endpoint inside the VPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from conventions import (
    API_CONNECT_PORT,
    API_CONTAINER_PORT,
    API_PUBLIC_PORT,
    API_TLS_PORT,
    GATEWAY_AGENT_PORT,
    OPENVPN_PORT,
    POSTGRES_PORT,
    SSH_PORT,
    TUNNEL_SERVICE_PORT,
    tags,
)

WORLD = "0.0.0.0/0"
HEALTH_CHECKERS = "public-subnets"  # the NLB's nodes live in the public subnets

# group key -> (Role tag, description)
GROUPS = {
    "api_lb": ("api", "Cloud API load balancer: HTTPS from anywhere"),
    "tunnel_lb": ("api", "Cloud API tunnel load balancer: TLS to the CONNECT tunnel"),
    "renewal_lb": ("api", "Cloud API renewal load balancer: internal, from the gateways only"),
    "api": ("api", "Cloud API tasks: from their load balancers only"),
    "gateway": ("gateway", "VPN gateways: OpenVPN from anywhere, the rest from named groups"),
    "database": ("registry", "Registry database: PostgreSQL from gateways and API only"),
    "admin": ("network", "EC2 Instance Connect Endpoint: the operators' SSH door"),
}
# (group, protocol, port, source: WORLD | HEALTH_CHECKERS | group key, why)
INGRESS = [
    ("api_lb", "tcp", API_PUBLIC_PORT, WORLD, "HTTPS to the cloud API"),
    ("tunnel_lb", "tcp", API_CONNECT_PORT, WORLD, "TLS to the API's CONNECT tunnel"),
    ("api", "tcp", API_CONTAINER_PORT, "api_lb", "API traffic from its load balancer"),
    ("api", "tcp", API_CONNECT_PORT, "tunnel_lb", "CONNECT tunnel from its load balancer"),
    # The gateways' renewal client certificates reach the API's own TLS listener untouched.
    ("renewal_lb", "tcp", API_TLS_PORT, "gateway", "Renewals, mutual TLS from the gateways"),
    ("api", "tcp", API_TLS_PORT, "renewal_lb", "Renewals from their load balancer"),
    ("gateway", "udp", OPENVPN_PORT, WORLD, "OpenVPN from devices, via the NLB"),
    ("gateway", "tcp", GATEWAY_AGENT_PORT, HEALTH_CHECKERS, "NLB health checks of the agent"),
    ("gateway", "tcp", TUNNEL_SERVICE_PORT, "api", "Tunnel service, mutual TLS from the API"),
    ("gateway", "tcp", SSH_PORT, "admin", "Ansible over SSH through the endpoint"),
    ("database", "tcp", POSTGRES_PORT, "gateway", "Registry access of the gateway agents"),
    ("database", "tcp", POSTGRES_PORT, "api", "Registry access of the cloud API"),
]
EGRESS = [
    ("api_lb", "tcp", API_CONTAINER_PORT, "api", "Forward to the API tasks"),
    # Its TCP health checks go the same way, to the same port.
    ("tunnel_lb", "tcp", API_CONNECT_PORT, "api", "Forward to the API tasks' CONNECT tunnel"),
    # Its TCP health checks go the same way, to the same port.
    ("renewal_lb", "tcp", API_TLS_PORT, "api", "Forward to the API tasks' HTTPS listener"),
    ("api", "tcp", 443, WORLD, "AWS APIs and the image registry"),
    ("api", "tcp", TUNNEL_SERVICE_PORT, "gateway", "Reach devices through their gateway"),
    ("api", "tcp", POSTGRES_PORT, "database", "Registry"),
    ("gateway", "tcp", 80, WORLD, "Debian mirrors"),
    ("gateway", "tcp", 443, WORLD, "git, PyPI and AWS APIs"),
    ("gateway", "tcp", POSTGRES_PORT, "database", "Registry"),
    ("gateway", "tcp", API_TLS_PORT, "renewal_lb", "Devices' renewals, to the API"),
    ("admin", "tcp", SSH_PORT, "gateway", "SSH to the gateways"),
]


@dataclass
class FirewallArgs:
    """Where the groups live and what the health checks come from."""

    stack: str
    vpc_id: pulumi.Input[str]
    public_subnet_cidrs: Sequence[str]
    endpoint_subnet_id: pulumi.Input[str]


class Firewall(pulumi.ComponentResource):
    """Security groups with one rule resource per line of INGRESS/EGRESS, and the SSH endpoint."""

    def __init__(self, name: str, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("iotistic-vpn:index:Firewall", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # Groups carry no inline rules: rules reference each other (gateway <-> database), which
        # inline blocks would turn into a dependency cycle. A new group has no egress at all.
        self.groups: dict[str, aws.ec2.SecurityGroup] = {
            key: aws.ec2.SecurityGroup(
                f"{name}-{key.replace('_', '-')}",
                vpc_id=args.vpc_id,
                description=description,
                tags=tags(args.stack, role, f"iotistic-vpn-{args.stack}-{key}"),
                opts=child,
            )
            for key, (role, description) in GROUPS.items()
        }
        for direction, table, rule_type in (
            ("in", INGRESS, aws.vpc.SecurityGroupIngressRule),
            ("out", EGRESS, aws.vpc.SecurityGroupEgressRule),
        ):
            for group, protocol, port, peer, why in table:
                cidrs = args.public_subnet_cidrs if peer == HEALTH_CHECKERS else [peer]
                for index, cidr in enumerate(cidrs):
                    suffix = f"-{index}" if peer == HEALTH_CHECKERS else ""
                    source = (
                        {"referenced_security_group_id": self.groups[peer].id}
                        if peer in self.groups
                        else {"cidr_ipv4": cidr}
                    )
                    rule_type(
                        f"{name}-{group}-{direction}-{protocol}{port}-{peer.replace('_', '-')}"
                        f"{suffix}",
                        security_group_id=self.groups[group].id,
                        ip_protocol=protocol,
                        from_port=port,
                        to_port=port,
                        description=why,
                        tags=tags(args.stack, GROUPS[group][0]),
                        opts=child,
                        **source,
                    )

        self.endpoint = aws.ec2transitgateway.InstanceConnectEndpoint(
            f"{name}-ssh-endpoint",
            subnet_id=args.endpoint_subnet_id,
            security_group_ids=[self.groups["admin"].id],
            preserve_client_ip=False,
            tags=tags(args.stack, "network", f"iotistic-vpn-{args.stack}-ssh"),
            opts=child,
        )
        self.register_outputs(
            {f"{key}_sg_id": sg.id for key, sg in self.groups.items()}
            | {"endpoint_id": self.endpoint.id}
        )

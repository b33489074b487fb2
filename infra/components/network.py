"""Network: a VPC over the stack's zones, public subnets for the balancers, private for the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from conventions import tags


@dataclass
class NetworkArgs:
    """What the VPC is made of; every value comes from stack config."""

    stack: str
    region: str
    cidr: str
    zones: Sequence[str]
    public_subnets: Sequence[str]
    private_subnets: Sequence[str]
    nat_gateways: int


class Network(pulumi.ComponentResource):
    """VPC, internet gateway, NAT gateways, public and private subnets, routes, S3 endpoint."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("iotistic-vpn:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = "network"

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=tags(args.stack, role, f"iotistic-vpn-{args.stack}"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=self.vpc.id, tags=tags(args.stack, role), opts=child
        )

        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags=tags(args.stack, role, f"iotistic-vpn-{args.stack}-public"),
            opts=child,
        )
        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        for index, (zone, public_cidr, private_cidr) in enumerate(
            zip(args.zones, args.public_subnets, args.private_subnets, strict=True)
        ):
            public = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=self.vpc.id,
                cidr_block=public_cidr,
                availability_zone=zone,
                # Only the load balancers live here; no instance gets a public address.
                map_public_ip_on_launch=False,
                tags={**tags(args.stack, role, f"public-{zone}"), "Tier": "public"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}",
                subnet_id=public.id,
                route_table_id=public_rt.id,
                opts=child,
            )
            private = aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=self.vpc.id,
                cidr_block=private_cidr,
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={**tags(args.stack, role, f"private-{zone}"), "Tier": "private"},
                opts=child,
            )
            self.public_subnets.append(public)
            self.private_subnets.append(private)

        # One NAT gateway per zone in production (a zone outage keeps the others' egress),
        # fewer in dev to save money; private zone i uses NAT gateway i modulo the count.
        nats = []
        for index in range(args.nat_gateways):
            eip = aws.ec2.Eip(
                f"{name}-nat-{index}", domain="vpc", tags=tags(args.stack, role), opts=child
            )
            nats.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{index}",
                    allocation_id=eip.id,
                    subnet_id=self.public_subnets[index].id,
                    tags=tags(args.stack, role, f"nat-{args.zones[index]}"),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
            )
        private_tables = []
        for index, subnet in enumerate(self.private_subnets):
            table = aws.ec2.RouteTable(
                f"{name}-private-{index}",
                vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nats[index % len(nats)].id}],
                tags=tags(args.stack, role, f"private-{args.zones[index]}"),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{index}", subnet_id=subnet.id, route_table_id=table.id, opts=child
            )
            private_tables.append(table)

        # The gateways fetch the CRL from S3 without paying NAT traffic for it.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=self.vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[t.id for t in private_tables],
            tags=tags(args.stack, role, "s3-gateway-endpoint"),
            opts=child,
        )

        self.vpc_id = self.vpc.id
        self.public_subnet_ids = [s.id for s in self.public_subnets]
        self.private_subnet_ids = [s.id for s in self.private_subnets]
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
            }
        )

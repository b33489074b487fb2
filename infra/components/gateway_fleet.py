"""GatewayFleet: Debian 12 gateways in an autoscaling group behind a UDP network load balancer."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
from conventions import (
    CONNECTED_DEVICES_METRIC,
    DEBIAN_AMI_OWNER,
    GATEWAY_AGENT_PORT,
    GATEWAY_HEALTH_PATH,
    METRIC_NAMESPACE,
    OPENVPN_PORT,
    tags,
)
from stackconfig import GatewaySettings

from components.dns import load_balancer_alias

INFRA = Path(__file__).resolve().parents[1]
REPO = INFRA.parent
USER_DATA_TEMPLATE = INFRA / "cloud-init" / "gateway.cloud-config"
# The Debian image names its architectures its own way.
DEBIAN_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


def pull_requirements() -> list[str]:
    """Return the pinned pip requirements a gateway's ansible-pull runs with.

    Ansible's pins come from the repository's requirements.txt, so a gateway runs the same
    Ansible as CI; the AWS SDK pins come from infra/requirements-deploy.txt.
    """
    wanted = {"ansible", "ansible-core"}
    pins = [
        line
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.split("==")[0] in wanted
    ]
    pins += [
        line
        for line in (INFRA / "requirements-deploy.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return pins


def render_user_data(settings: GatewaySettings, cloud_vars: Mapping[str, object]) -> str:
    """Return the gateway's cloud-init document (plain text, not yet base64)."""
    template = string.Template(USER_DATA_TEMPLATE.read_text())
    return template.substitute(
        cloud_vars_json=json.dumps(dict(cloud_vars), sort_keys=True),
        pip_requirements=" ".join(f"'{pin}'" for pin in pull_requirements()),
        repo_url=settings.repo_url,
        git_revision=settings.git_revision,
    )


@dataclass
class GatewayFleetArgs:
    """Sizes from stack config; placement, identity and facts from the other components."""

    stack: str
    name_prefix: str
    settings: GatewaySettings
    vpc_id: pulumi.Input[str]
    public_subnet_ids: Sequence[pulumi.Input[str]]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    instance_profile_arn: pulumi.Input[str]
    zone_id: str
    vpn_hostname: str
    # Variables the gateway playbook reads (iotistic_vpn_cloud_*), written to the host at boot.
    cloud_vars: Mapping[str, pulumi.Input[object]]


class GatewayFleet(pulumi.ComponentResource):
    """Launch template, autoscaling group, NLB on UDP 1194, health checks, scaling, DNS."""

    def __init__(
        self, name: str, args: GatewayFleetArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("iotistic-vpn:index:GatewayFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        gw = args.settings
        role = "gateway"
        gateway_tags = tags(args.stack, role, f"{args.name_prefix}-gateway")

        # Looked up at deploy time: new Debian point releases reach new gateways by themselves.
        ami = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[DEBIAN_AMI_OWNER],
            filters=[
                {"name": "name", "values": [f"debian-12-{DEBIAN_ARCH[gw.architecture]}-*"]},
                {"name": "architecture", "values": [gw.architecture]},
                {"name": "virtualization-type", "values": ["hvm"]},
                {"name": "root-device-type", "values": ["ebs"]},
            ],
        )
        key_pair = aws.ec2.KeyPair(
            f"{name}-ssh",
            key_name_prefix=f"{args.name_prefix}-gw-",
            public_key=gw.ssh_public_key,
            tags=tags(args.stack, role),
            opts=child,
        )
        keys = sorted(args.cloud_vars)
        user_data = pulumi.Output.all(*(args.cloud_vars[k] for k in keys)).apply(
            lambda values: base64.b64encode(
                render_user_data(gw, dict(zip(keys, values, strict=True))).encode()
            ).decode()
        )
        self.launch_template = aws.ec2.LaunchTemplate(
            f"{name}-template",
            name_prefix=f"{args.name_prefix}-gw-",
            description="VPN gateway: Debian 12, configured at boot by ansible-pull",
            image_id=ami.id,
            instance_type=gw.instance_type,
            key_name=key_pair.key_name,
            iam_instance_profile={"arn": args.instance_profile_arn},
            vpc_security_group_ids=[args.security_group_id],
            user_data=user_data,
            update_default_version=True,
            # IMDSv2 only, one hop: a container on the gateway cannot borrow its role.
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": 1,
            },
            monitoring={"enabled": True},
            block_device_mappings=[
                {
                    "device_name": "/dev/xvda",
                    "ebs": {
                        "volume_size": gw.root_volume_gb,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            tag_specifications=[
                {"resource_type": "instance", "tags": gateway_tags},
                {"resource_type": "volume", "tags": gateway_tags},
            ],
            tags=tags(args.stack, role),
            opts=child,
        )

        self.target_group = aws.lb.TargetGroup(
            f"{name}-openvpn",
            port=OPENVPN_PORT,
            protocol="UDP",
            target_type="instance",
            vpc_id=args.vpc_id,
            deregistration_delay=gw.drain_seconds,
            # UDP has no close: end the flows of a deregistered gateway so devices reconnect.
            connection_termination=True,
            health_check={
                "protocol": "HTTP",
                "port": str(GATEWAY_AGENT_PORT),
                "path": GATEWAY_HEALTH_PATH,
                "matcher": "200",
                "interval": 10,
                "healthy_threshold": 3,
                "unhealthy_threshold": 3,
            },
            tags=tags(args.stack, role),
            opts=child,
        )
        self.load_balancer = aws.lb.LoadBalancer(
            f"{name}-nlb",
            name=f"{args.name_prefix}-gw",
            load_balancer_type="network",
            internal=False,
            subnets=list(args.public_subnet_ids),
            enable_cross_zone_load_balancing=True,
            tags=tags(args.stack, role, f"{args.name_prefix}-gw"),
            opts=child,
        )
        aws.lb.Listener(
            f"{name}-openvpn",
            load_balancer_arn=self.load_balancer.arn,
            port=OPENVPN_PORT,
            protocol="UDP",
            default_actions=[{"type": "forward", "target_group_arn": self.target_group.arn}],
            tags=tags(args.stack, role),
            opts=child,
        )

        self.group = aws.autoscaling.Group(
            f"{name}-asg",
            name_prefix=f"{args.name_prefix}-gw-",
            min_size=gw.min_size,
            max_size=gw.max_size,
            desired_capacity=gw.desired_capacity,
            vpc_zone_identifiers=list(args.private_subnet_ids),
            launch_template={
                "id": self.launch_template.id,
                "version": self.launch_template.latest_version.apply(str),
            },
            target_group_arns=[self.target_group.arn],
            health_check_type="ELB",
            health_check_grace_period=gw.health_check_grace_seconds,
            default_instance_warmup=gw.health_check_grace_seconds,
            # "0": `pulumi up` does not wait for healthy gateways. A gateway passes the health
            # check only once publish (after `pulumi up`) wrote its secrets, so that wait would
            # never end on a new stack; the pipeline waits after publish instead
            # (playbooks/cloud_health.yml), bounded by this grace period.
            wait_for_capacity_timeout="0",
            enabled_metrics=[
                "GroupDesiredCapacity",
                "GroupInServiceInstances",
                "GroupMinSize",
                "GroupMaxSize",
            ],
            tags=[
                {"key": key, "value": value, "propagate_at_launch": True}
                for key, value in gateway_tags.items()
            ],
            # The scaling policies own the desired count once the group exists.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["desiredCapacity"]),
        )
        aws.autoscaling.Policy(
            f"{name}-cpu",
            autoscaling_group_name=self.group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration={
                "predefined_metric_specification": {
                    "predefined_metric_type": "ASGAverageCPUUtilization"
                },
                "target_value": gw.target_cpu_percent,
            },
            opts=child,
        )
        aws.autoscaling.Policy(
            f"{name}-devices",
            autoscaling_group_name=self.group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration={
                "customized_metric_specification": {
                    "metric_name": CONNECTED_DEVICES_METRIC,
                    "namespace": METRIC_NAMESPACE,
                    "statistic": "Average",
                    "metric_dimensions": [
                        {"name": "AutoScalingGroupName", "value": self.group.name}
                    ],
                },
                "target_value": gw.target_devices_per_gateway,
            },
            opts=child,
        )
        load_balancer_alias(
            f"{name}-dns", args.zone_id, args.vpn_hostname, self.load_balancer, child
        )

        self.register_outputs(
            {
                "nlb_name": self.load_balancer.name,
                "nlb_dns_name": self.load_balancer.dns_name,
                "asg_name": self.group.name,
            }
        )

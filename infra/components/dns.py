"""The one kind of DNS record the stack makes: a name that aliases a load balancer."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws


def load_balancer_alias(
    name: str,
    zone_id: pulumi.Input[str],
    hostname: pulumi.Input[str],
    load_balancer: aws.lb.LoadBalancer,
    opts: pulumi.ResourceOptions,
) -> aws.route53.Record:
    """An A alias for the load balancer; Route 53 answers only while its targets are healthy."""
    return aws.route53.Record(
        name,
        zone_id=zone_id,
        name=hostname,
        type="A",
        aliases=[
            {
                "name": load_balancer.dns_name,
                "zone_id": load_balancer.zone_id,
                "evaluate_target_health": True,
            }
        ],
        opts=opts,
    )

"""Build mocked stacks in child processes and read back what they declared."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MOCK_STACK = Path(__file__).with_name("mock_stack.py")

# Resource types by short name, as the tests use them.
T = {
    "vpc": "aws:ec2/vpc:Vpc",
    "subnet": "aws:ec2/subnet:Subnet",
    "nat": "aws:ec2/natGateway:NatGateway",
    "sg": "aws:ec2/securityGroup:SecurityGroup",
    "ingress": "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    "egress": "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
    "eice": "aws:ec2transitgateway/instanceConnectEndpoint:InstanceConnectEndpoint",
    "launch_template": "aws:ec2/launchTemplate:LaunchTemplate",
    "asg": "aws:autoscaling/group:Group",
    "asg_policy": "aws:autoscaling/policy:Policy",
    "lb": "aws:lb/loadBalancer:LoadBalancer",
    "target_group": "aws:lb/targetGroup:TargetGroup",
    "listener": "aws:lb/listener:Listener",
    "rds": "aws:rds/instance:Instance",
    "rds_subnets": "aws:rds/subnetGroup:SubnetGroup",
    "rds_params": "aws:rds/parameterGroup:ParameterGroup",
    "bucket": "aws:s3/bucket:Bucket",
    "public_access_block": "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
    "versioning": "aws:s3/bucketVersioning:BucketVersioning",
    "encryption": "aws:s3/bucketServerSideEncryptionConfiguration:"
    "BucketServerSideEncryptionConfiguration",
    "ownership": "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
    "bucket_policy": "aws:s3/bucketPolicy:BucketPolicy",
    "kms": "aws:kms/key:Key",
    "secret": "aws:secretsmanager/secret:Secret",
    "role": "aws:iam/role:Role",
    "role_policy": "aws:iam/rolePolicy:RolePolicy",
    "instance_profile": "aws:iam/instanceProfile:InstanceProfile",
    "ecs_service": "aws:ecs/service:Service",
    "task": "aws:ecs/taskDefinition:TaskDefinition",
    "ecr": "aws:ecr/repository:Repository",
    "certificate": "aws:acm/certificate:Certificate",
    "record": "aws:route53/record:Record",
}


@dataclass
class Stack:
    """One mocked stack: its config, its resources' final state, its exports."""

    name: str
    report: dict[str, Any]
    config: dict[str, Any]

    @property
    def resources(self) -> list[dict[str, Any]]:
        """Provider resources (not components), each its state plus `urn` and `type`."""
        return [
            {**r["outputs"], "urn": r["urn"], "type": r["type"]}
            for r in self.report["resources"]
            if r["custom"]
        ]

    @property
    def exports(self) -> dict[str, Any]:
        return self.report["exports"]

    def of(self, short: str) -> list[dict[str, Any]]:
        """Resources of one type."""
        return [r for r in self.resources if r["type"] == T[short]]

    def one(self, short: str, name_part: str = "") -> dict[str, Any]:
        """The single resource of a type (whose URN contains name_part)."""
        found = [r for r in self.of(short) if name_part in r["urn"].rsplit("::", 1)[1]]
        assert len(found) == 1, f"expected one {short} named *{name_part}*, found {len(found)}"
        return found[0]

    def by_id(self, rid: str) -> dict[str, Any]:
        """The resource whose id (or ARN) is rid."""
        for r in self.resources:
            if rid in (r.get("id"), r.get("arn")):
                return r
        raise KeyError(rid)


def stack_config(stack: str) -> dict[str, Any]:
    """Pulumi.<stack>.yaml's project keys without the `iotistic-vpn:` namespace."""
    raw = yaml.safe_load((REPO / "infra" / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {key.split(":", 1)[1]: v for key, v in raw.items() if key.startswith("iotistic-vpn:")}


def build(out_dir: Path, jobs: dict[str, list[str]]) -> dict[str, tuple[int, dict[str, Any]]]:
    """Run mock_stack.py once per job (STACK [--set ...]) in parallel; return (rc, report)."""
    procs = {}
    for key, args in jobs.items():
        out = out_dir / f"{key}.json"
        cmd = [sys.executable, str(MOCK_STACK), args[0], str(out), *args[1:]]
        procs[key] = (out, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    results = {}
    for key, (out, proc) in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert out.exists(), f"mock run {key} wrote no report:\n{stderr}"
        results[key] = (proc.returncode, json.loads(out.read_text()))
    return results

"""Run infra/__main__.py for one stack under Pulumi mocks and dump what it declared as JSON.

    python tests/infra/mock_stack.py STACK OUT.json [--set section.key=JSON ...]

The Pulumi CLI and the AWS provider cannot run here, so the mocks play the provider: every
resource gets realistic computed outputs (ids, ARNs, endpoints) and every function call the
program makes (zones, Debian AMI, Route 53 zone) gets a plausible answer. The Pulumi runtime
is process-wide, so each stack runs in its own process; tests read the JSON.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PROJECT = "iotistic-vpn"
ACCOUNT = "123456789012"


def _hex(*parts: str, length: int = 17) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


class AwsMocks(pulumi.runtime.Mocks):
    """Answer resource registrations and provider calls the way AWS would, deterministically."""

    def __init__(self, region: str, zones: int = 3) -> None:
        self.region = region
        self.zones = [f"{region}{letter}" for letter in "abcdef"[:zones]]
        self.calls: list[dict[str, Any]] = []
        self.outputs: dict[str, dict] = {}

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append({"token": args.token, "args": _plain(args.args)})
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            ids = [f"euc1-az{i + 1}" for i in range(len(self.zones))]
            return {"id": self.region, "names": self.zones, "zoneIds": ids, "state": "available"}
        if args.token == "aws:ec2/getAmi:getAmi":
            filters = {f["name"]: f["values"] for f in args.args.get("filters", [])}
            arch = filters["architecture"][0]
            debian_arch = {"x86_64": "amd64", "arm64": "arm64"}[arch]
            return {
                "id": f"ami-{_hex('ami', arch)}",
                "imageId": f"ami-{_hex('ami', arch)}",
                "name": f"debian-12-{debian_arch}-20251020-2271",
                "architecture": arch,
                "ownerId": args.args["owners"][0],
                "rootDeviceName": "/dev/xvda",
                "virtualizationType": "hvm",
            }
        if args.token == "aws:route53/getZone:getZone":
            zone_id = "Z" + _hex("zone", args.args["name"], length=20).upper()
            return {"id": zone_id, "zoneId": zone_id, "name": args.args["name"]}
        raise LookupError(f"the mocks do not answer {args.token}")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        typ, name, region = args.typ, args.name, self.region
        token = _hex(typ, name)
        module = typ.split(":")[1].split("/")[0]
        rid = f"{name}-{token[:8]}"
        if "name" not in state and "namePrefix" in state:
            state["name"] = state["namePrefix"] + token[:10]
        elif "name" not in state:
            state["name"] = f"{name}-{token[:7]}"
        state.setdefault("arn", f"arn:aws:{module}:{region}:{ACCOUNT}:{name}/{token}")
        if "tags" in state:
            state["tagsAll"] = state["tags"]

        prefixes = {
            "aws:ec2/vpc:Vpc": "vpc",
            "aws:ec2/subnet:Subnet": "subnet",
            "aws:ec2/internetGateway:InternetGateway": "igw",
            "aws:ec2/routeTable:RouteTable": "rtb",
            "aws:ec2/routeTableAssociation:RouteTableAssociation": "rtbassoc",
            "aws:ec2/eip:Eip": "eipalloc",
            "aws:ec2/natGateway:NatGateway": "nat",
            "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce",
            "aws:ec2/securityGroup:SecurityGroup": "sg",
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "sgr",
            "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "sgr",
            "aws:ec2transitgateway/instanceConnectEndpoint:InstanceConnectEndpoint": "eice",
            "aws:ec2/launchTemplate:LaunchTemplate": "lt",
            "aws:ec2/keyPair:KeyPair": "key",
        }
        if typ in prefixes:
            rid = f"{prefixes[typ]}-{token}"
        if typ == "aws:ec2/eip:Eip":
            state["publicIp"] = f"198.51.100.{int(token[:2], 16) % 250 + 1}"
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        elif typ == "aws:ec2/keyPair:KeyPair":
            state["keyName"] = state["keyNamePrefix"] + token[:10]
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            kind = "net" if state.get("loadBalancerType") == "network" else "app"
            state["arn"] = (
                f"arn:aws:elasticloadbalancing:{region}:{ACCOUNT}:loadbalancer/"
                f"{kind}/{state['name']}/{token[:16]}"
            )
            state["arnSuffix"] = f"{kind}/{state['name']}/{token[:16]}"
            state["dnsName"] = f"{state['name']}-{token[:10]}.elb.{region}.amazonaws.com"
            state["zoneId"] = "Z3F0SRJ5LGBH90"
            rid = state["arn"]
        elif typ == "aws:lb/targetGroup:TargetGroup":
            state["arn"] = (
                f"arn:aws:elasticloadbalancing:{region}:{ACCOUNT}:targetgroup/"
                f"{state['name']}/{token[:16]}"
            )
            state["arnSuffix"] = f"targetgroup/{state['name']}/{token[:16]}"
            rid = state["arn"]
        elif typ == "aws:autoscaling/group:Group":
            rid = state["name"]
        elif typ == "aws:kms/key:Key":
            key_id = f"{token[:8]}-{token[8:12]}-4{token[12:15]}-8{token[15:17]}0-{token[:12]}"
            state["keyId"] = key_id
            state["arn"] = f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"
            rid = key_id
        elif typ == "aws:secretsmanager/secret:Secret":
            secret = f"{state['name']}-Ab12Cd"  # AWS appends six random characters
            state["arn"] = f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{secret}"
            rid = state["arn"]
        elif typ == "aws:s3/bucket:Bucket":
            state["bucket"] = state.get("bucketPrefix", name) + token[:12]
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
            rid = state["bucket"]
        elif typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{state['name']}"
            rid = state["name"]
        elif typ == "aws:iam/instanceProfile:InstanceProfile":
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:instance-profile/{state['name']}"
            rid = state["name"]
        elif typ == "aws:rds/instance:Instance":
            address = f"{state['identifier']}.c{token[:11]}.{region}.rds.amazonaws.com"
            state.update(
                address=address,
                endpoint=f"{address}:{state['port']}",
                arn=f"arn:aws:rds:{region}:{ACCOUNT}:db:{state['identifier']}",
                masterUserSecrets=[
                    {
                        "secretArn": f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:"
                        f"rds!db-{token[:8]}-Xy12Zw",
                        "secretStatus": "active",
                        "kmsKeyId": state["masterUserSecretKmsKeyId"],
                    }
                ],
            )
            rid = state["identifier"]
        elif typ == "aws:acm/certificate:Certificate":
            domain = state["domainName"]
            state["arn"] = f"arn:aws:acm:{region}:{ACCOUNT}:certificate/{token}"
            state["domainValidationOptions"] = [
                {
                    "domainName": domain,
                    "resourceRecordName": f"_{token[:12]}.{domain}.",
                    "resourceRecordType": "CNAME",
                    "resourceRecordValue": f"_{token[5:17]}.acm-validations.aws.",
                }
            ]
        elif typ == "aws:route53/record:Record":
            state["fqdn"] = str(state["name"]).rstrip(".")
        elif typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{state['name']}"
            state["arn"] = f"arn:aws:ecr:{region}:{ACCOUNT}:repository/{state['name']}"
            rid = state["name"]
        elif typ == "aws:ecs/service:Service":
            rid = f"arn:aws:ecs:{region}:{ACCOUNT}:service/{state['name']}"
        elif typ == "aws:cloudwatch/logGroup:LogGroup":
            state["arn"] = f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{state['name']}"
        state["id"] = rid
        self.outputs[f"{typ}::{name}"] = state
        return rid, state


class RecordingMonitor(MockMonitor):
    """MockMonitor that also keeps each registration's URN, parent and dependencies."""

    def __init__(self, mocks: AwsMocks) -> None:
        super().__init__(mocks)
        self.registrations: list[dict[str, Any]] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                {
                    "urn": response.urn,
                    "type": request.type,
                    "name": request.name,
                    "parent": request.parent,
                    "custom": bool(request.custom),
                    "dependencies": list(request.dependencies),
                }
            )
        return response


def _plain(value: Any) -> Any:
    """Make mock inputs JSON-friendly (resource references become their URNs)."""
    return json.loads(json.dumps(value, default=str))


def stack_config(stack: str, overrides: list[str]) -> dict[str, Any]:
    """Read Pulumi.<stack>.yaml and apply `section.key=JSON` overrides."""
    config = yaml.safe_load((INFRA / f"Pulumi.{stack}.yaml").read_text())["config"]
    config = copy.deepcopy(config)
    for item in overrides:
        path, _, text = item.partition("=")
        value = yaml.safe_load(text)
        section, _, key = path.partition(".")
        full = section if ":" in section else f"{PROJECT}:{section}"
        if key:
            config[full][key] = value
        else:
            config[full] = value
    return config


def run(stack: str, config: dict[str, Any], zones: int = 3) -> dict[str, Any]:
    """Run the program under mocks; return resources, calls, exports or the error."""
    flat = {
        key: json.dumps(value) if isinstance(value, dict | list | bool) else str(value)
        for key, value in config.items()
    }
    pulumi.runtime.set_all_config(flat)
    mocks = AwsMocks(config["aws:region"], zones=zones)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    sys.path.insert(0, str(INFRA))
    exports: dict[str, Any] = {}

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(INFRA / "__main__.py"), run_name="__main__")
        outputs = pulumi.runtime.get_root_resource().outputs
        return pulumi.Output.from_input(outputs).apply(exports.update)

    error = trace = None
    try:
        program()
    except Exception as exc:  # the program's RunError, or any crash: report it, don't hide it
        error = f"{type(exc).__name__}: {exc}"
        trace = traceback.format_exc()
    resources = []
    for reg in monitor.registrations:
        state = mocks.outputs.get(f"{reg['type']}::{reg['name']}", {})
        resources.append({**reg, "outputs": _plain(state)})
    return {
        "stack": stack,
        "error": error,
        "traceback": trace,
        "resources": resources,
        "calls": mocks.calls,
        "exports": _plain(exports),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: write the JSON report, exit 1 if the program failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack")
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML")
    parser.add_argument("--zones", type=int, default=3, help="zones the mocked region offers")
    args = parser.parse_args(argv)
    report = run(args.stack, stack_config(args.stack, args.set), zones=args.zones)
    args.out.write_text(json.dumps(report, indent=1, sort_keys=True))
    return 1 if report["error"] else 0


if __name__ == "__main__":
    sys.exit(main())

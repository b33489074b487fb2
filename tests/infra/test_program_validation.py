"""A bad stack value stops the real program with one clear line, before any resource exists."""

from __future__ import annotations

import pytest

from tests.infra.stackreport import build

CASES = {
    "min_above_max": (
        ["dev", "--set", "gateways.minSize=5"],
        "invalid gateways.minSize 5: must not exceed gateways.maxSize (3)",
    ),
    "unknown_family": (
        ["dev", "--set", "gateways.instanceType=x9.large"],
        "invalid gateways.instanceType 'x9.large': unknown instance type family 'x9'; use one of",
    ),
    "cidr_in_vpn_pool": (
        ["dev", "--set", "network.cidr=100.64.0.0/16"],
        "invalid network.cidr '100.64.0.0/16': overlaps the VPN address pool 100.64.0.0/10",
    ),
    "more_zones_than_region": (
        ["dev", "--set", "network.azCount=4"],
        "invalid network.azCount 4: region eu-central-1 has only 3 available zones "
        "(eu-central-1a, eu-central-1b, eu-central-1c)",
    ),
    "enrollment_not_a_boolean": (
        ["prod", "--set", "api.enrollment=enabled"],
        "invalid api.enrollment 'enabled': must be true or false",
    ),
    "prod_single_az_database": (
        ["prod", "--set", "database.multiAz=false"],
        "invalid database.multiAz False: a production stack needs true",
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case's run of infra/__main__.py under mocks, in parallel processes."""
    return build(tmp_path_factory.mktemp("bad"), {k: args for k, (args, _) in CASES.items()})


@pytest.mark.parametrize("case", CASES)
def test_bad_config_fails_with_the_value_named_and_nothing_declared(runs, case):
    args, message = CASES[case]
    returncode, report = runs[case]
    assert returncode == 1
    # RunError: Pulumi prints this line alone, without a traceback.
    assert report["error"].startswith(f"RunError: stack {args[0]}: {message}")
    assert report["resources"] == [], "no resource, not even a component, may be registered"
    tokens = [c["token"] for c in report["calls"]]
    if case == "more_zones_than_region":
        assert tokens == ["aws:index/getAvailabilityZones:getAvailabilityZones"]
    else:
        assert tokens == []

"""Identifier and network validation: the one place every adapter relies on."""

import ipaddress

import pytest

from iotistic_vpn import validation
from iotistic_vpn.errors import InvalidValue


@pytest.mark.parametrize("value", ["a", "dev-01", "0a1b2c3d4e5f", "x" * 63, "9-lives"])
def test_device_id_accepts_dns_labels(value):
    assert validation.device_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "-dev", "dev-", "Dev01", "dev_01", "dev.01", "dev 01", "x" * 64, "dev\n", "dév", "../etc"],
)
def test_device_id_rejects_and_names_the_value(value):
    with pytest.raises(InvalidValue, match=r"invalid device id") as err:
        validation.device_id(value)
    assert repr(value) in str(err.value)
    assert err.value.value == value


@pytest.mark.parametrize("value", [None, 42, b"dev"])
def test_device_id_rejects_non_strings(value):
    with pytest.raises(InvalidValue, match="must be a string"):
        validation.device_id(value)


@pytest.mark.parametrize("value", ["ab", "acme", "acme-corp", "c" * 32])
def test_customer_id_accepts(value):
    assert validation.customer_id(value) == value


@pytest.mark.parametrize("value", ["a", "c" * 33, "Acme", "acme_corp", "-acme", "acme-"])
def test_customer_id_rejects(value):
    with pytest.raises(InvalidValue, match=r"^invalid customer id "):
        validation.customer_id(value)


def test_ip_network_parses_strict_ipv4():
    assert validation.ip_network("100.64.0.0/10") == ipaddress.IPv4Network("100.64.0.0/10")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("100.64.0.1/10", "host bits"),
        ("not-a-cidr", "not an IPv4 CIDR"),
        ("fd00::/8", "only IPv4"),
        (1234, "must be an IPv4 CIDR"),
    ],
)
def test_ip_network_rejects_with_reason(value, reason):
    with pytest.raises(InvalidValue, match=reason) as err:
        validation.ip_network(value, field="pool")
    assert str(err.value).startswith(f"invalid pool {value!r}")


@pytest.mark.parametrize("value", ["pump-*", "line-??", "*", "sn-1000000*"])
def test_device_glob_accepts_device_id_characters_and_wildcards(value):
    assert validation.device_glob(value) == value


@pytest.mark.parametrize("value", ["pump-[0-9]", "(a+)+$", "Pump-*", "", "x" * 64, "a b"])
def test_device_glob_refuses_a_regex_and_names_it(value):
    with pytest.raises(InvalidValue, match=r"invalid device pattern .*a glob"):
        validation.device_glob(value)


def test_aware_time_needs_iso_8601_with_a_zone():
    assert validation.aware_time("2027-01-31T00:00:00+00:00").tzinfo is not None
    with pytest.raises(InvalidValue, match="give a time zone"):
        validation.aware_time("2027-01-31T00:00:00", "expires_at")
    with pytest.raises(InvalidValue, match="invalid expires_at 'soon': use ISO 8601"):
        validation.aware_time("soon", "expires_at")

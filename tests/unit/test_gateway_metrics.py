"""The agent's metrics: every deny reason decide() gives has its own fixed label."""

from __future__ import annotations

import ipaddress

import pytest

from iotistic_vpn.authorize import Deny, DeviceGrant, Snapshot, decide
from iotistic_vpn.gateway_metrics import DENY_CODES, DRAINING, Metrics, deny_code

GRANT = DeviceGrant(
    "dev-01", "acme", ipaddress.IPv4Address("100.64.0.2"), "active", frozenset({12})
)
REVOKED = DeviceGrant("dev-01", "acme", GRANT.vpn_address, "revoked", frozenset())


def _reason(env: dict[str, str], grant: DeviceGrant = GRANT) -> str:
    base = {"X509_0_CN": "dev-01", "X509_0_O": "acme", "tls_serial_0": "12"}
    verdict = decide({**base, **env}, Snapshot({grant.device_id: grant}))
    assert isinstance(verdict, Deny)
    return verdict.reason


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (_reason({"X509_0_CN": "Dev_01"}), "bad_name"),
        (_reason({"X509_0_CN": "dev-02"}), "unknown_device"),
        (_reason({"X509_0_O": "globex"}), "wrong_customer"),
        (_reason({"tls_serial_0": "13"}), "serial_not_current"),
        (_reason({"tls_serial_0": ""}), "no_serial"),
        (_reason({}, REVOKED), "device_revoked"),
        (DRAINING, "draining"),
        ("something new", "other"),
    ],
)
def test_each_deny_reason_has_its_label(reason, code):
    assert deny_code(reason) == code


def test_the_exposition_has_every_series_with_its_labels_from_the_start():
    metrics = Metrics(["iotistic-0", "iotistic-1"])
    metrics.denied.labels("unknown_device").inc()
    text = metrics.render().decode()
    for line in (
        'iotistic_gateway_connected_devices{instance="iotistic-1"} 0.0',
        'iotistic_gateway_management_up{instance="iotistic-0"} 0.0',
        "iotistic_gateway_connects_accepted_total 0.0",
        'iotistic_gateway_connects_denied_total{reason="unknown_device"} 1.0',
        'iotistic_gateway_connects_denied_total{reason="serial_not_current"} 0.0',
        "iotistic_gateway_spool_depth 0.0",
        "iotistic_gateway_snapshot_age_seconds 0.0",
        "iotistic_gateway_registry_up 0.0",
        "iotistic_gateway_events_flushed_total 0.0",
        "iotistic_gateway_revoked_serials 0.0",
    ):
        assert line in text.splitlines(), line
    assert len(DENY_CODES) == len(set(DENY_CODES))

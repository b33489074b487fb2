"""The agent's metrics: every series is there, with its labels, from the first scrape."""

from __future__ import annotations

from iotistic_vpn.gateway.authorize import DENY_CODES
from iotistic_vpn.gateway.metrics import Metrics, health_problems


def test_the_exposition_has_every_series_with_its_labels_from_the_start():
    metrics = Metrics(["iotistic-0", "iotistic-1"])
    metrics.denied.labels("unknown_device").inc()
    text = metrics.render().decode()
    for line in (
        'iotistic_gateway_connected_devices{instance="iotistic-1"} 0.0',
        'iotistic_gateway_management_up{instance="iotistic-0"} 0.0',
        'iotistic_gateway_holds_released_total{instance="iotistic-1"} 0.0',
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
    for code in DENY_CODES:
        assert f'iotistic_gateway_connects_denied_total{{reason="{code}"}}' in text


def test_a_gateway_is_healthy_only_when_it_can_decide_keep_and_knows_the_registry():
    ok = {"iotistic-0": True, "iotistic-1": True}
    assert health_problems(ok, None, False, 4.0, 300) == []
    assert health_problems(ok, None, False, None, 300) == ["no registry snapshot yet"]
    assert health_problems(ok, None, False, 301.2, 300) == [
        "registry snapshot 301 s old (limit 300 s)"
    ]
    assert health_problems({**ok, "iotistic-1": False}, "spool locked", True, 1.0, 300) == [
        "instance iotistic-1: management socket not held", "spool locked", "draining",
    ]  # fmt: skip

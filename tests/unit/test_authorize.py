"""The gateway's connect decision on a registry snapshot."""

import ipaddress

import pytest

from iotistic_vpn.authorize import Accept, Deny, DeviceGrant, Snapshot, decide

GRANT = DeviceGrant(
    "dev-01", "acme", ipaddress.IPv4Address("100.64.0.2"), "active", frozenset({11, 12})
)
SNAP = Snapshot({"dev-01": GRANT})


def env(**over):
    base = {"X509_0_CN": "dev-01", "X509_0_O": "acme", "tls_serial_0": "12"}
    return {**base, **over}


def test_current_certificate_is_accepted_with_its_stable_address():
    assert decide(env(), SNAP) == Accept(GRANT)
    # The older serial stays valid during a rotation.
    assert decide(env(tls_serial_0="11"), SNAP) == Accept(GRANT)


@pytest.mark.parametrize(
    ("overrides", "snapshot", "reason"),
    [
        ({"X509_0_CN": "Dev_01"}, SNAP, "invalid device id 'Dev_01'"),
        ({"X509_0_CN": "dev-02"}, SNAP, "device 'dev-02' is not in the registry"),
        (
            {"X509_0_O": "globex"},
            SNAP,
            "certificate customer 'globex' is not the registry's 'acme'",
        ),
        ({"tls_serial_0": "13"}, SNAP, "certificate serial 13 is not current"),
        ({"tls_serial_0": ""}, SNAP, "no certificate serial"),
        (
            {},
            Snapshot(
                {
                    "dev-01": DeviceGrant(
                        "dev-01", "acme", GRANT.vpn_address, "revoked", frozenset({12})
                    )
                }
            ),
            "device 'dev-01' is revoked",
        ),
    ],
)
def test_everything_else_is_denied_with_a_reason(overrides, snapshot, reason):
    decision = decide(env(**overrides), snapshot)
    assert isinstance(decision, Deny)
    assert reason in decision.reason

"""The gateway's connect decision on a registry snapshot."""

import ipaddress

import pytest

from iotistic_vpn.gateway.authorize import Accept, Deny, DeviceGrant, Snapshot, decide

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
    ("overrides", "snapshot", "code", "reason"),
    [
        ({"X509_0_CN": "Dev_01"}, SNAP, "bad_name", "invalid device id 'Dev_01'"),
        ({"X509_0_CN": "dev-02"}, SNAP, "unknown_device", "device 'dev-02' is not in the registry"),
        (
            {"X509_0_O": "globex"},
            SNAP,
            "wrong_customer",
            "certificate customer 'globex' is not the registry's 'acme'",
        ),
        (
            {"tls_serial_0": "13"},
            SNAP,
            "serial_not_current",
            "certificate serial 13 is not current",
        ),
        ({"tls_serial_0": ""}, SNAP, "no_serial", "no certificate serial"),
        (
            {},
            Snapshot(
                {
                    "dev-01": DeviceGrant(
                        "dev-01", "acme", GRANT.vpn_address, "revoked", frozenset({12})
                    )
                }
            ),
            "device_revoked",
            "device 'dev-01' is revoked",
        ),
    ],
)
def test_everything_else_is_denied_with_a_code_and_a_reason(overrides, snapshot, code, reason):
    decision = decide(env(**overrides), snapshot)
    assert isinstance(decision, Deny)
    assert decision.code == code  # the metrics label and the log key
    assert reason in decision.reason


def test_a_deny_code_outside_the_fixed_set_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown deny code 'made_up'"):
        Deny("made_up", "whatever")


@pytest.mark.parametrize(
    ("code", "told", "killed"),
    [
        ("device_revoked", "not authorised", "HALT"),
        ("draining", "TEMP[backoff 1,advance remote]not authorised", "RESTART,[N]"),
        ("unknown_device", "TEMP[backoff 30,advance remote]not authorised", "RESTART,[N]"),
        ("serial_not_current", "TEMP[backoff 30,advance remote]not authorised", "RESTART,[N]"),
    ],
)
def test_only_a_revoked_device_is_told_to_stop_for_good(code, told, killed):
    # OpenVPN exits (status 0, not restarted by the device's unit) on a plain AUTH_FAILED and on
    # HALT; AUTH_FAILED,TEMP[...] and RESTART keep it retrying, on the next gateway.
    from iotistic_vpn.gateway.authorize import client_reason, kill_message

    deny = Deny(code, "why")
    assert client_reason(deny) == told
    assert kill_message(deny) == killed

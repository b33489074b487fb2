"""The product path: a customer's token, the cloud API in lab-api, a gateway's tunnel service, a
device's agent. What a customer may reach, what it may not, and how fast the API says no.

Tokens are made for each test in the registry (as `iotistic-vpn tokens create` makes them),
with names of their own. The device side is checked through the stand-in agent's
/debug/requests (the last request lines it saw), so "nothing reached the device" is asserted on
the device, not inferred from the API's answer.
"""

from __future__ import annotations

import base64
import socket
import statistics
import time
import uuid

import httpx

from tests.e2e.lab import (
    API,
    CLIENT_UNIT,
    CONNECT_PORT,
    api_client,
    api_reaches,
    fleet,
    in_container,
    lab_address,
    lab_devices,
    new_token,
    revoke_token,
    wait_for,
)

CUSTOMER_A, CUSTOMER_B = "acme", "globex"
REVOKE_TRIALS = 5


def _devices_of(customer: str):
    devices = [d for d in fleet() if d.customer_id == customer and d.connected]
    assert devices, f"no connected device of {customer} in the lab"
    return devices


def _seen_by(client: httpx.Client, device: str) -> list[str]:
    """The request lines the device's agent saw last, asked through the API."""
    answer = client.get(f"/v1/devices/{device}/proxy/debug/requests")
    assert answer.status_code == 200, answer.text
    return answer.json()["requests"]


def test_a_customers_token_reaches_its_devices_and_nothing_of_another_customers():
    token = new_token(CUSTOMER_A)
    mine, theirs = _devices_of(CUSTOMER_A), _devices_of(CUSTOMER_B)
    with api_client(token.value) as api:
        listed = api.get("/v1/devices")
        assert listed.status_code == 200, listed.text
        assert {d["id"] for d in listed.json()} == {
            d.id for d in lab_devices().values() if d.customer_id == CUSTOMER_A
        }
        for device in mine:
            answer = api.get(f"/v1/devices/{device.id}/proxy/v1/device")
            assert answer.status_code == 200, f"{device.id}: {answer.status_code} {answer.text}"
            body = answer.json()
            assert (body["device_id"], body["customer_id"]) == (device.id, CUSTOMER_A), body

        # Another customer's device is answered exactly as one that does not exist.
        unknown = f"nosuch-{uuid.uuid4().hex[:8]}"
        for path in ("", "/proxy/v1/device"):
            nothing = api.get(f"/v1/devices/{unknown}{path}")
            assert nothing.status_code == 404, nothing.text
            for device in theirs:
                answer = api.get(f"/v1/devices/{device.id}{path}")
                assert answer.status_code == 404, f"{device.id}{path}: {answer.text}"
                assert answer.text.replace(device.id, unknown) == nothing.text
                assert answer.headers.get("content-type") == nothing.headers.get("content-type")


def test_a_read_only_token_cannot_write_and_nothing_reaches_the_device():
    device = _devices_of(CUSTOMER_A)[0].id
    reader, writer = new_token(CUSTOMER_A), new_token(CUSTOMER_A, read_only=False)
    marker = uuid.uuid4().hex
    with api_client(reader.value) as api:
        refused = api.post(f"/v1/devices/{device}/proxy/v1/restart?m={marker}", json={})
        assert refused.status_code == 403, refused.text
        assert not [line for line in _seen_by(api, device) if marker in line]
    # The same request with a read-write token does reach it: the check above could fail.
    with api_client(writer.value) as api:
        done = api.post(f"/v1/devices/{device}/proxy/v1/restart?m={marker}", json={})
        assert done.status_code == 200, done.text
        assert f"POST /v1/restart?m={marker}" in _seen_by(api, device)


def test_a_revoked_token_is_refused_within_a_second(record_property):
    device = _devices_of(CUSTOMER_A)[0].id
    figures = []
    for _ in range(REVOKE_TRIALS):
        token = new_token(CUSTOMER_A)
        with api_client(token.value) as api:
            assert api.get(f"/v1/devices/{device}").status_code == 200
            revoke_token(token)
            start = time.monotonic()
            while (status := api.get(f"/v1/devices/{device}").status_code) != 401:
                assert status == 200, status
                assert time.monotonic() - start < 5, "the revoked token is still accepted"
                time.sleep(0.01)
            figures.append(time.monotonic() - start)

    # A stream that is open (a long poll, a line a second) is cut too.
    token = new_token(CUSTOMER_A)
    with (
        api_client(token.value, timeout=30) as api,
        api.stream("GET", f"/v1/devices/{device}/proxy/v1/drip") as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        next(lines)
        revoke_token(token)
        start = time.monotonic()
        try:
            for _ in lines:
                assert time.monotonic() - start < 5, "the stream outlived its token"
        except httpx.HTTPError:
            pass  # cut mid-chunk: the end we want
        cut_s = time.monotonic() - start

    worst = max(figures)
    record_property("api_revoke_refused_max_s", round(worst, 3))
    record_property("api_revoke_stream_cut_s", round(cut_s, 3))
    print(
        f"\napi revoke: first 401 after {statistics.median(figures) * 1000:.0f} ms median, "
        f"{worst * 1000:.0f} ms worst of {REVOKE_TRIALS}; open stream cut after {cut_s:.2f} s"
    )
    assert worst < 1.0, figures
    assert cut_s < 1.5, cut_s


def test_an_offline_device_answers_503_at_once(record_property):
    device = _devices_of(CUSTOMER_A)[-1]
    token = new_token(CUSTOMER_A)
    in_container(device.id, "systemctl", "stop", CLIENT_UNIT)
    try:
        # explicit-exit-notify: the gateway hears the client leave and the agent records it.
        wait_for(lambda: not lab_devices()[device.id].connected, 30, f"{device.id} offline")
        with api_client(token.value) as api:
            start = time.monotonic()
            answer = api.get(f"/v1/devices/{device.id}/proxy/v1/device")
            took = time.monotonic() - start
            assert answer.status_code == 503, answer.text
            assert api.get(f"/v1/devices/{device.id}").json()["online"] is False
    finally:
        in_container(device.id, "systemctl", "start", CLIENT_UNIT)
    record_property("api_offline_503_s", round(took, 3))
    print(f"\napi offline device: 503 after {took * 1000:.0f} ms")
    assert took < 0.5, took
    with api_client(token.value) as api:
        wait_for(lambda: api_reaches(api, device), 60, f"{device.id} to answer again")


def _connect(target: str, token: str) -> tuple[str, socket.socket]:
    """CONNECT through the API's tunnel port; the status line and the open socket."""
    sock = socket.create_connection((lab_address(API), CONNECT_PORT), timeout=10)
    basic = base64.b64encode(f"token:{token}".encode()).decode()
    sock.sendall(
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        f"Proxy-Authorization: Basic {basic}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head.split(b"\r\n", 1)[0].decode(), sock


def test_the_connect_tunnel_reaches_a_device_port_and_only_the_tokens_customers():
    device = _devices_of(CUSTOMER_A)[0]
    token = new_token(CUSTOMER_A)
    status, sock = _connect(f"{device.id}.{CUSTOMER_A}:48484", token.value)
    with sock:
        assert status.split()[1] == "200", status
        # Bytes both ways: plain HTTP to the device's agent, inside the tunnel.
        sock.sendall(b"GET /v1/device HTTP/1.1\r\nHost: device\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert f'"device_id": "{device.id}"'.encode() in body, body

    other = _devices_of(CUSTOMER_B)[0]
    for target in (f"{other.id}.{CUSTOMER_B}:48484", f"nosuch-1.{CUSTOMER_B}:48484"):
        status, sock = _connect(target, token.value)
        sock.close()
        assert status.split()[1] == "404", f"{target}: {status}"
    status, sock = _connect(f"{device.id}.{CUSTOMER_A}:22", token.value)
    sock.close()
    assert status.split()[1] == "403", status  # the token allows 48484 only

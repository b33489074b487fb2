"""The cloud API end to end: token -> registry -> the gateway's tunnel -> the device's agent.

Real PostgreSQL, real OpenVPN, the real agent with its tunnel service, the API as its own
process (uvicorn) and the lab's stand-in agent on each device.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from iotistic_vpn.errors import InvalidValue, NotFound
from iotistic_vpn.registry import Registry
from tests.support.api_harness import gateway_with_api
from tests.support.gateway_harness import UP, eventually

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


@pytest.fixture
def lab(start_gateway, pg_server):
    gw, api, devices = gateway_with_api(start_gateway, pg_server)
    yield gw, api, devices
    print(api.log()[-6000:])  # shown by pytest when the test failed
    (Path("/tmp") / "last-api.log").write_text(api.log())


def _device_saw(gw, device: str) -> list[str]:
    """What the device's agent was asked, read inside the gateway (not through the API)."""
    address = gw.registry.find_device(device).vpn_address
    code, body = gw.curl(f"http://{address}:48484/debug/requests")
    assert code == 200
    import json

    return json.loads(body)["requests"]


def test_a_customer_sees_and_reaches_only_its_own_devices(lab):
    gw, api, _ = lab
    acme = api.token("acme-dash", "acme", read_only=False)
    with api.client(acme) as c:
        listed = c.get("/v1/devices").json()
        assert [d["id"] for d in listed] == ["dev-a", "dev-b", "dev-r", "dev-s", "dev-z"]
        online = {d["id"]: d for d in listed if d["online"]}
        assert list(online) == ["dev-a"]
        assert online["dev-a"]["gateway"] == "gw-1"
        assert online["dev-a"]["vpn_address"] == gw.registry.find_device("dev-a").vpn_address
        assert online["dev-a"]["certificate_expires"] is not None
        answer = c.get("/v1/devices/dev-a/proxy/v1/device")
        assert answer.status_code == 200
        assert (answer.json()["device_id"], answer.json()["customer_id"]) == ("dev-a", "acme")
        restart = c.post("/v1/devices/dev-a/proxy/v1/restart", json={"force": False})
        assert restart.json() == {"Data": "OK", "Error": None}
        # Another customer's device answers exactly like one that does not exist.
        foreign = c.get("/v1/devices/dev-g/proxy/v1/device")
        unknown = c.get("/v1/devices/nosuch/proxy/v1/device")
        assert (foreign.status_code, unknown.status_code) == (404, 404)
        assert foreign.json()["detail"].replace("dev-g", "X") == unknown.json()["detail"].replace(
            "nosuch", "X"
        )
        assert c.get("/v1/devices/dev-g").status_code == 404
        # An offline device of this customer: 503 at once, not a hang.
        started = time.monotonic()
        offline = c.get("/v1/devices/dev-b/proxy/v1/device")
        assert offline.status_code == 503 and time.monotonic() - started < 1.0
    assert "GET /v1/device" in _device_saw(gw, "dev-a")
    assert _device_saw(gw, "dev-g") == ["GET /debug/requests"]  # acme never reached it


def test_the_device_gets_end_to_end_headers_only_never_the_token(lab):
    _, api, _ = lab
    token = api.token("hdr", "acme", read_only=False)
    with api.client(token, cookies={"session": "s3cret"}) as c:
        echo = c.post(
            "/v1/devices/dev-a/proxy/v1/echo?x=1",
            content=b"hello",
            headers={"X-Custom": "kept", "Connection": "X-Drop", "X-Drop": "gone",
                     "Proxy-Authorization": "Basic Zm9v", "TE": "trailers"},
        ).json()  # fmt: skip
    seen = {k.lower(): v for k, v in echo["headers"].items()}
    assert echo["method"] == "POST" and echo["path"] == "/v1/echo?x=1" and echo["body_bytes"] == 5
    assert seen["x-custom"] == "kept" and seen["host"] == "dev-a:48484"
    for header in ("authorization", "cookie", "x-drop", "proxy-authorization", "te"):
        assert header not in seen, header
    assert token not in str(echo)


@pytest.mark.parametrize(
    "path",
    [
        "../../v1/device", "v1/%2e%2e/%2e%2e/etc", "v1/%252e%252e/x", "/etc/passwd",
        "http://evil/x", "v1/a%0d%0aX-Injected:%20yes", "v1/a%00b", "v1\\..\\x",
    ],
)  # fmt: skip
def test_hostile_paths_are_refused_and_nothing_reaches_the_device(lab, path):
    gw, api, _ = lab
    token = api.token("paths", "acme")
    before = _device_saw(gw, "dev-a")
    with api.client(token) as c:
        response = c.get("/v1/devices/dev-a/proxy/" + path)
    assert response.status_code in (400, 404), response.text
    after = _device_saw(gw, "dev-a")
    assert after[len(before) :] == ["GET /debug/requests"]


def test_tokens_are_checked_every_time_and_read_only_cannot_write(lab):
    _, api, _ = lab
    ro = api.token("ro", "acme")
    with api.client(ro) as c:
        assert c.get("/v1/devices/dev-a/proxy/ping").text == "OK"
        assert c.post("/v1/devices/dev-a/proxy/v1/restart").status_code == 403
    for header in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"},
                   {"Authorization": "Bearer ivpn_0123456789abcdef_" + "A" * 43}):  # fmt: skip
        with api.client() as c:
            response = c.get("/v1/devices", headers=header)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    limited = api.token("one-device", "acme", devices=["dev-z"])
    with api.client(limited) as c:
        assert [d["id"] for d in c.get("/v1/devices").json()] == ["dev-z"]
        assert c.get("/v1/devices/dev-a/proxy/ping").status_code == 404


def test_a_revoked_token_is_refused_within_a_second_even_mid_stream(lab):
    _, api, _ = lab
    token = api.token("revocable", "acme")
    from iotistic_vpn.registry import Registry

    with Registry(api.dsn) as reg:
        token_id = next(t.id for t in reg.list_tokens("acme") if t.name == "revocable")
    result: dict = {}

    def stall() -> None:
        with api.client(token, timeout=20) as c:
            started = time.monotonic()
            try:
                result["status"] = c.get("/v1/devices/dev-a/proxy/v1/stall").status_code
            except httpx.HTTPError as exc:
                result["error"] = type(exc).__name__
            result["after"] = time.monotonic() - started

    # A device that accepts and never answers costs the read timeout, not a stuck worker.
    stall()
    assert result.get("status") == 504 and result["after"] < 5, result
    # A long poll in progress when the token is revoked ends within a second of it.
    ended: dict = {}

    def long_poll() -> None:
        with api.client(token, timeout=40) as c:
            try:
                with c.stream("GET", "/v1/devices/dev-a/proxy/v1/drip") as response:
                    ended["status"] = response.status_code
                    for _ in response.iter_lines():
                        ended["lines"] = ended.get("lines", 0) + 1
            except httpx.HTTPError as exc:
                ended["error"] = type(exc).__name__
            ended["at"] = time.monotonic()

    poller = threading.Thread(target=long_poll)
    poller.start()
    eventually(lambda: ended.get("lines", 0) >= 2, "the long poll streaming")
    with api.client(token) as c:
        assert c.get("/v1/devices/dev-a/proxy/ping").status_code == 200
        with Registry(api.dsn) as reg:
            reg.revoke_token(token_id, actor="test")
        revoked_at = time.monotonic()
        while c.get("/v1/devices").status_code != 401:
            assert time.monotonic() - revoked_at < 1.0, "the revoked token still works"
            time.sleep(0.02)
        assert time.monotonic() - revoked_at < 1.0
    poller.join(10)
    assert ended["status"] == 200 and ended["lines"] < 10
    assert ended["at"] - revoked_at < 1.5, ended


def test_every_request_is_audited_without_its_query(lab):
    _, api, _ = lab
    token = api.token("audited", "acme")
    with api.client(token) as c:
        assert c.get("/v1/devices/dev-a/proxy/v1/device?secret=abc").status_code == 200
        assert c.get("/v1/devices/dev-g").status_code == 404
    operator = api.token("ops", None)

    def found():
        with api.client(operator) as c:
            rows = c.get("/v1/audit", params={"limit": 50}).json()
        return [r for r in rows if r["action"] == "request" and r["detail"]["token"] == "audited"]

    rows = eventually(lambda: len(found()) == 2 and found(), "the requests in the audit log")
    by_path = {r["detail"]["path"]: r for r in rows}
    proxied = by_path["/v1/devices/dev-a/proxy/v1/device"]
    assert proxied["device"] == "dev-a" and proxied["customer"] == "acme"
    assert proxied["detail"]["status"] == 200 and proxied["detail"]["bytes_out"] > 0
    assert by_path["/v1/devices/dev-g"]["detail"]["status"] == 404
    assert "secret" not in str(rows)


def _http_over(sock, path: str = "/v1/device") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_the_tcp_tunnel_reaches_the_customers_device_ports_only(lab):
    import base64

    _, api, _ = lab
    token = api.token("tcp", "acme", ports=[48484])
    bearer = f"Bearer {token}"
    status, sock = api.connect("dev-a.acme:48484", bearer)
    assert status == "HTTP/1.1 200 Connection Established"
    assert b'"device_id": "dev-a"' in _http_over(sock)
    basic = "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()
    status, sock = api.connect("dev-a.acme:48484", basic)
    assert status.startswith("HTTP/1.1 200") and b"dev-a" in _http_over(sock)
    for target, auth, expected in [
        ("dev-a.acme:48484", None, "407"),
        ("dev-a.acme:48484", "Bearer nope", "407"),
        ("dev-a.acme:22", bearer, "403"),  # not a port of this token
        ("dev-g.globex:48484", bearer, "404"),  # another customer's device
        ("dev-g.acme:48484", bearer, "404"),  # ... named as if it were ours
        ("nosuch.acme:48484", bearer, "404"),
        ("dev-b.acme:48484", bearer, "503"),  # ours, offline
        ("100.64.0.2:48484", bearer, "400"),  # an address is not a device
        ("dev-a.acme", bearer, "400"),
    ]:
        status, sock = api.connect(target, auth)
        assert sock is None and status.split(" ")[1] == expected, (target, status)
    foreign = api.connect("dev-g.globex:48484", bearer)[0].split(" ", 2)[2]
    unknown = api.connect("nosuch.acme:48484", bearer)[0].split(" ", 2)[2]
    assert foreign == unknown


def test_a_tcp_tunnel_ends_within_a_second_of_its_token_being_revoked(lab):
    _, api, _ = lab
    token = api.token("tcp-revoke", "acme")
    from iotistic_vpn.registry import Registry

    status, sock = api.connect("dev-a.acme:48484", f"Bearer {token}", timeout=20)
    assert status.startswith("HTTP/1.1 200")
    sock.sendall(b"GET /v1/drip HTTP/1.1\r\nHost: d\r\n\r\n")
    assert sock.recv(4096)  # the long poll has begun
    with Registry(api.dsn) as reg:
        token_id = next(t.id for t in reg.list_tokens("acme") if t.name == "tcp-revoke")
        reg.revoke_token(token_id, actor="test")
    revoked = time.monotonic()
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
    assert time.monotonic() - revoked < 1.5

    def audited():
        with Registry(api.dsn) as reg:
            return [e for e in reg.audit_log(token_id=token_id, action="request")
                    if e.detail["method"] == "CONNECT"]  # fmt: skip

    entry = eventually(audited, "the tunnel in the audit log")[0]
    assert entry.detail["path"] == "dev-a.acme:48484" and entry.detail["status"] == 200
    assert entry.detail["bytes_out"] > 0


def test_the_device_gets_its_own_agent_key_and_the_key_goes_nowhere_else(lab):
    gw, api, _ = lab
    key = "agent-key-" + "k" * 24
    with Registry(api.dsn) as reg:
        assert reg.set_agent_key("acme", "dev-z", key, actor="test").changed
        assert not reg.set_agent_key("acme", "dev-z", key, actor="test").changed
    dev = gw.device("dev-z", 1, agent_key=key)
    dev.client.wait_for(UP)
    eventually(lambda: gw.db("dev-z") == (True, "gw-1", "active"), "dev-z online")
    token = api.token("keyed", "acme")
    with api.client(token) as c:
        echo = c.get("/v1/devices/dev-z/proxy/v1/echo").json()
    assert echo["headers"]["Authorization"] == f"Bearer {key}"  # the device's key, not ours
    assert token not in json.dumps(echo)
    # The device itself refuses a caller without its key (e.g. anything else on the gateway).
    address = gw.registry.find_device("dev-z").vpn_address
    code, _ = gw.curl(f"http://{address}:48484/v1/device")
    assert code == 401
    with Registry(api.dsn) as reg:
        trail = json.dumps([e.as_dict() for e in reg.audit_log(device_id="dev-z", limit=50)])
        assert "device.agent_key.set" in trail and key not in trail
        assert reg.set_agent_key("acme", "dev-z", None, actor="test").changed
        assert reg.agent_key("dev-z") is None
        with pytest.raises(InvalidValue, match="agent key"):
            reg.set_agent_key("acme", "dev-z", "short", actor="test")
        with pytest.raises(NotFound):
            reg.set_agent_key("globex", "dev-z", key, actor="test")
    assert key not in api.log()


def test_requests_during_a_registry_outage_are_audited_once_it_is_back(lab, pg_server):
    _, api, _ = lab
    token = api.token("outage", "acme")
    marker = "outage-" + str(time.monotonic_ns())
    pg_server.stop()
    try:
        with api.client(token) as c:
            statuses = [
                c.get(f"/v1/devices/dev-a/proxy/{marker}/{i}").status_code for i in range(5)
            ]
    finally:
        pg_server.start()
    assert statuses == [503] * 5  # the token cannot be checked: refused, not waited on

    def replayed():
        with Registry(api.dsn) as reg:
            rows = reg.audit_log(action="request", limit=200)
        return [r for r in rows if marker in r.detail["path"]]

    rows = eventually(lambda: len(replayed()) == 5 and replayed(), "the spooled requests", 30)
    assert sorted(r.detail["path"] for r in rows) == [
        f"/v1/devices/dev-a/proxy/{marker}/{i}" for i in range(5)
    ]
    assert {r.detail["status"] for r in rows} == {503}


def test_a_lock_held_in_the_registry_answers_503_in_time_never_a_hung_request(lab):
    """An admin's open transaction (or a migration) holding a lock the API's queries need: the
    API's lock_timeout (2 s by default) cuts the wait, the client gets 503, and the same token
    works once the lock is gone."""
    import psycopg

    _, api, _ = lab
    token = api.token("locked-out", "acme")  # never asked yet: nothing cached for it
    with psycopg.connect(api.dsn) as admin, api.client(token) as c:
        admin.execute("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        answer = c.get("/v1/devices")
        waited = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert 1.5 < waited < 8, f"answered after {waited:.1f} s"  # the lock timeout, not a hang
        admin.rollback()
        assert c.get("/v1/devices").status_code == 200


def test_oversized_and_malformed_requests_are_refused_before_the_device(lab):
    import socket

    gw, api, _ = lab
    token = api.token("big", "acme", read_only=False)
    before = _device_saw(gw, "dev-a")
    with api.client(token) as c:
        # A body over the limit (1 MiB here): by its Content-Length, and chunked.
        assert (
            c.post("/v1/devices/dev-a/proxy/v1/echo", content=b"x" * (2 << 20)).status_code == 413
        )

        def chunks():
            for _ in range(40):
                yield b"y" * 65536

        assert c.post("/v1/devices/dev-a/proxy/v1/echo", content=chunks()).status_code == 413
    # A header block far over any sane size, and a NUL in a header: refused by the server.
    for head in (b"X-Big: " + b"a" * 200_000 + b"\r\n", b"X-Nul: a\x00b\r\n"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(api.socket))
        auth = b"Authorization: Bearer " + token.encode() + b"\r\n"
        sock.sendall(b"GET /v1/devices/dev-a/proxy/v1/echo HTTP/1.1\r\nHost: api\r\n"
                     + auth + head + b"\r\n")  # fmt: skip
        answer = sock.recv(4096)
        sock.close()
        assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
        assert b"iotistic-device-agent" not in answer, answer[:200]  # the API's, not the device's
    assert _device_saw(gw, "dev-a")[len(before) :] == ["GET /debug/requests"]


def _restart_agent(device) -> None:
    """Stop a device's stand-in agent and start it again on the same port."""
    device.standin.signal(signal.SIGTERM)
    device.standin.wait_exit(5)
    log = device.standin.log.with_name(device.standin.log.name + ".again")
    device.standin = device.ns.start(_standin_argv(device), log)
    device.standin.wait_for("listening on")


def _standin_argv(device) -> list[str]:
    # ns.start wrapped the argv in `ip netns exec NAME`: the stand-in's own argv follows it.
    argv = device.standin.argv
    return argv[argv.index(device.ns.name) + 1 :]


def test_the_device_leg_survives_an_agent_restart_and_carries_head_and_cut_answers(lab):
    """The API's own HTTP/1.1 client to devices (iotistic_vpn.api.device_http), as a customer
    sees it: pooled tunnels the agent closed are not reused for an answer, a HEAD answer has no
    body whatever its Content-Length says, and an answer the device cut short reaches the
    client as cut, never as a complete one."""
    _, api, devices = lab
    token = api.token("leg", "acme", read_only=False)
    with api.client(token) as c:
        assert c.get("/v1/devices/dev-a/proxy/ping").text == "OK"
        _restart_agent(devices["dev-a"])  # its end of the pooled tunnel is gone
        assert c.get("/v1/devices/dev-a/proxy/ping").text == "OK"
        assert c.post("/v1/devices/dev-a/proxy/v1/echo", content=b"abc").json()["body_bytes"] == 3
        # The stand-in has no HEAD handler: its 501 declares a length and sends no body.
        head = c.head("/v1/devices/dev-a/proxy/v1/device")
        assert head.status_code == 501 and head.content == b""
        assert c.get("/v1/devices/dev-a/proxy/ping").text == "OK"  # the same tunnel, in step
        # The long poll declares 180 bytes; the agent dies after a few of them.
        got = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            c.stream("GET", "/v1/devices/dev-a/proxy/v1/drip") as response,
        ):
            for line in response.iter_lines():
                got.append(line)
                if len(got) == 2:
                    devices["dev-a"].standin.signal(signal.SIGKILL)
        assert 2 <= len(got) < 30


def test_an_idle_pooled_tunnel_is_closed_so_it_holds_no_gateway_tunnel(start_gateway, pg_server):
    """A device asked once keeps no tunnel through its gateway for ever (each counts against the
    tunnel service's max_tunnels): the API closes pooled connections idle for device_idle_s."""
    gw, api, _ = gateway_with_api(start_gateway, pg_server, device_idle_s=1)
    token = api.token("idle", "acme")
    with api.client(token) as c:
        assert c.get("/v1/devices/dev-a/proxy/ping").status_code == 200
        assert gw.health()[1]["tunnels"] == 1  # pooled for the next request
        eventually(lambda: gw.health()[1]["tunnels"] == 0, "the idle tunnel closed", 5)
        assert c.get("/v1/devices/dev-a/proxy/ping").status_code == 200  # a new one, at once

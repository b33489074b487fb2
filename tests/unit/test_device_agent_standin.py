"""The lab's stand-in device agent answers the balena-like API over real HTTP."""

import threading
from http.server import ThreadingHTTPServer

import httpx
import pytest

from tests.support.standin import load_standin

make_handler = load_standin().make_handler


@pytest.fixture
def agent():
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), make_handler({"device_id": "dev-01", "customer_id": "acme"})
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ping_device_and_restart(agent):
    with httpx.Client(base_url=agent, timeout=5) as client:
        assert client.get("/ping").text == "OK"
        device = client.get("/v1/device").json()
        assert (device["device_id"], device["customer_id"], device["status"]) == (
            "dev-01",
            "acme",
            "Idle",
        )
        assert client.post("/v1/restart").json() == {"Data": "OK", "Error": None}
        assert client.get("/v1/nothing").status_code == 404


def test_keep_alive_echo_blob_and_the_request_record(agent):
    with httpx.Client(base_url=agent, timeout=5) as client:
        echo = client.put("/v1/echo?x=1", content=b"12345", headers={"X-Test": "yes"}).json()
        assert (echo["method"], echo["path"], echo["body_bytes"]) == ("PUT", "/v1/echo?x=1", 5)
        assert echo["headers"]["X-Test"] == "yes"
        blob = client.get("/v1/blob?bytes=200000")
        assert len(blob.content) == 200000
        assert client.get("/v1/blob?bytes=lots").status_code == 400
        # One connection served all of them (HTTP/1.1 keep-alive, as real agents do).
        assert client.get("/ping").http_version == "HTTP/1.1"
        seen = client.get("/debug/requests").json()["requests"]
        assert seen[-2:] == ["GET /ping", "GET /debug/requests"]
        assert "PUT /v1/echo?x=1" in seen

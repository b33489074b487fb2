"""The customer dashboard of the lab's API, in a real browser: Debian's chromium driven by
Playwright (as tests/integration/test_dashboard.py launches it; nothing is downloaded).

From this machine to lab-api's own address (this machine routes to the lab network, as
test_8_api's clients do): a customer signs in with a token of its own, sees its fleet and none of
another customer's devices, opens a device whose page shows its agent's /v1/device fetched
through the tunnel, restarts it (confirming the dialog), and the restart reaches that device's
agent, read on the device itself (the stand-in's /debug/requests); the device's page shows its
recent audit. Screenshots are kept in build/e2e/dashboard/.

The session cookie is `__Host-` and `Secure`, and the lab's API speaks plain HTTP (production
sits behind an HTTPS load balancer). Chromium keeps Secure cookies over plain HTTP only from a
loopback origin (`--unsafely-treat-insecure-origin-as-secure` does not cover cookies), so the
browser goes to a byte relay on 127.0.0.1 that this test runs, which connects every connection
straight to lab-api:8000 and copies bytes both ways, nothing more: every request is the lab
API's to answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.lab import (
    API,
    API_PORT,
    REPO,
    fleet,
    lab_address,
    lab_devices,
    new_token,
    requests_seen,
    wait_for,
)
from tests.support.browser import CHROMIUM, chromium_context

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")

ARTIFACTS = REPO / "build" / "e2e" / "dashboard"
CUSTOMER, OTHER = "acme", "globex"


def _copy(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _relay(listener: socket.socket, target: tuple[str, int], open_: list[socket.socket]) -> None:
    """Accept until the listener closes; pipe each connection to target."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # closed: the fixture is done
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        open_ += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_copy, args=(a, b), daemon=True).start()


@pytest.fixture
def base():
    """http://127.0.0.1:PORT: a relay to lab-api's own address, port 8000 (see above)."""
    target = (lab_address(API), API_PORT)
    listener = socket.create_server(("127.0.0.1", 0))
    open_: list[socket.socket] = []
    thread = threading.Thread(target=_relay, args=(listener, target, open_), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for sock in open_:
            sock.close()
        thread.join(5)


@pytest.fixture
def browser(base):
    """A browser context (tests/support/browser.py); console errors fail the test."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_context() as context:
        yield context


def _shot(page, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def _since(before: list[str], after: list[str]) -> list[str]:
    """The request lines a device saw after `before` (the stand-in keeps its last 200)."""
    return after[len(before) :] if len(after) > len(before) else after[-5:]


def test_a_customer_signs_in_sees_its_fleet_and_restarts_a_device_through_the_tunnel(
    base, browser, record_property
):
    token = new_token(CUSTOMER, read_only=False)
    mine = [d for d in fleet() if d.customer_id == CUSTOMER]
    theirs = [d for d in lab_devices().values() if d.customer_id == OTHER]
    assert mine and theirs, f"the lab needs devices of {CUSTOMER} and {OTHER}"
    page = browser.new_page()

    started = time.monotonic()
    page.goto(base + "/dashboard/login")
    _shot(page, "login.png")
    page.fill("#token", token.value)
    page.click("form[action='/dashboard/login'] button[type=submit]")
    page.wait_for_url(base + "/dashboard/")
    assert [c for c in browser.cookies() if c["name"] == "__Host-ivpn_session"], "no session"

    # The fleet: the customer's devices online, with the registry's gateway and address; none
    # of the other customer's.
    rows = [r.get_attribute("data-device") for r in page.locator("#fleet tbody tr").all()]
    customer_ids = sorted(d.id for d in lab_devices().values() if d.customer_id == CUSTOMER)
    assert sorted(rows) == customer_ids, rows
    assert not {d.id for d in theirs} & set(rows)
    for device in mine:
        row = page.locator(f"tr[data-device='{device.id}']")
        assert row.locator(".online").inner_text() == "online", device.id
        assert row.locator(".gateway").inner_text() == device.gateway, device.id
        assert row.locator(".address").inner_text() == device.vpn_address, device.id
    _shot(page, "fleet.png")
    assert token.value not in page.content()

    # One device's page: its agent's own answer, fetched through the API and the tunnel.
    device = mine[0]
    before = requests_seen(device.id)
    page.click(f"tr[data-device='{device.id}'] a")
    page.wait_for_url(f"{base}/dashboard/devices/{device.id}")
    agent = json.loads(page.inner_text("#agent"))
    assert (agent["device_id"], agent["customer_id"]) == (device.id, CUSTOMER), agent
    assert "GET /v1/device" in _since(before, requests_seen(device.id))

    # Restart, confirmed in the dialog: it reaches that device's agent.
    before = requests_seen(device.id)
    page.click("#restart-open")
    assert page.locator("#restart-dialog").is_visible()
    _shot(page, "restart-dialog.png", full_page=False)
    page.click("#restart-confirm")
    page.wait_for_url(f"{base}/dashboard/devices/{device.id}?restart=ok")
    assert "accepted" in page.inner_text("#restart-result")
    assert "POST /v1/restart" in _since(before, requests_seen(device.id))
    for other in mine[1:]:
        assert "POST /v1/restart" not in requests_seen(other.id)[-5:], other.id

    # The device's recent audit, on its page: the restart through the dashboard.
    def audited() -> bool:
        page.goto(f"{base}/dashboard/devices/{device.id}")
        return f"POST /dashboard/devices/{device.id}/restart" in page.inner_text("#audit")

    wait_for(audited, 15, f"the restart in {device.id}'s audit on its page", interval=1)
    row = page.locator("#audit tr", has_text=f"POST /dashboard/devices/{device.id}/restart")
    cells = row.first.locator("td").all_inner_texts()
    assert cells[1].startswith("e2e-") and cells[3] == "303", cells  # the token's name
    _shot(page, "device.png")
    took = time.monotonic() - started
    record_property("dashboard_flow_s", round(took, 1))
    print(f"\ndashboard: sign-in, fleet, {device.id}'s page, restart and audit in {took:.1f} s")

    # Another customer's device is not there for this customer.
    response = page.goto(f"{base}/dashboard/devices/{theirs[0].id}")
    assert response is not None and response.status == 404

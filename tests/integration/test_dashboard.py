"""The customer dashboard in a real browser: Debian's chromium driven by Playwright.

A real gateway, real devices and the API as its own process, as in test_api.py; the API listens
on TCP 127.0.0.1 inside the harness's `api` namespace and chromium runs in that namespace too
(a wrapper execs it under `ip netns exec`), so the browser reaches the API and the API reaches
the gateway, and nothing leaves the test's namespaces. Nothing is downloaded: Playwright drives
/usr/bin/chromium. Screenshots land in build/test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from iotistic_vpn.registry import Registry
from tests.support.api_harness import gateway_with_api
from tests.support.browser import chromium_context
from tests.support.gateway_harness import eventually

pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium not installed"),
]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts" / "dashboard"
PORT = 18080  # the api namespace is this test's own: nothing else listens in it
BASE = f"http://127.0.0.1:{PORT}"
ACME = ["dev-a", "dev-b", "dev-r", "dev-s", "dev-z"]


@pytest.fixture
def lab(start_gateway, pg_server):
    gw, api, devices = gateway_with_api(start_gateway, pg_server, port=PORT)
    yield gw, api, devices
    print(api.log()[-6000:])  # shown by pytest when the test failed


@pytest.fixture
def browser(lab):
    """A browser context in the api namespace; console errors (a CSP refusal) fail the test."""
    gw = lab[0]
    wrapper = gw.work / "chromium-in-api-ns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {gw.api_ns.name} /usr/bin/chromium "$@"\n')
    wrapper.chmod(0o755)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_context(str(wrapper)) as context:
        yield context


def _device_saw(gw, device: str) -> list[str]:
    """What the device's agent was asked, read inside the gateway (not through the API)."""
    address = gw.registry.find_device(device).vpn_address
    code, body = gw.curl(f"http://{address}:48484/debug/requests")
    assert code == 200
    return json.loads(body)["requests"]


def _sign_in(page, token: str) -> None:
    page.goto(BASE + "/dashboard/login")
    page.fill("#token", token)
    page.click("form[action='/dashboard/login'] button[type=submit]")
    page.wait_for_url(BASE + "/dashboard/")


def _post(page, path: str, form: dict[str, str]) -> int:
    """A same-origin POST from the page (cookies sent, no redirect followed): its status."""
    return page.evaluate(
        """async ([path, form]) => (await fetch(path, {method: "POST", redirect: "manual",
             credentials: "same-origin", body: new URLSearchParams(form)})).status""",
        [path, form],
    )


def _csrf(page) -> str:
    return page.get_attribute("form[action='/dashboard/logout'] input[name=csrf]", "value")


def _shot(page, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def test_sign_in_and_the_fleet_table_follows_a_device_going_offline(lab, browser):
    gw, api, devices = lab
    token = api.token("acme-dash", "acme", read_only=False)
    page = browser.new_page()
    page.goto(BASE + "/")
    assert page.url == BASE + "/dashboard/login"
    _shot(page, "login.png")
    page.fill("#token", "ivpn_0123456789abcdef_" + "A" * 43)
    page.click("form[action='/dashboard/login'] button[type=submit]")
    assert page.inner_text("[role=alert]") == "That token was not accepted."
    assert not [c for c in browser.cookies() if c["name"] == "__Host-ivpn_session"]
    # Sign-in itself needs the form's CSRF token: a bare POST is refused and signs nobody in.
    assert _post(page, "/dashboard/login", {"token": token}) == 403
    assert not [c for c in browser.cookies() if c["name"] == "__Host-ivpn_session"]

    _sign_in(page, token)
    session = next(c for c in browser.cookies() if c["name"] == "__Host-ivpn_session")
    assert (session["httpOnly"], session["secure"], session["sameSite"]) == (True, True, "Strict")
    assert token not in session["value"]  # sealed: the cookie is not a bearer token
    response = page.reload()
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    rows = page.locator("#fleet tbody tr")
    assert [r.get_attribute("data-device") for r in rows.all()] == ACME  # never globex's dev-g
    dev_a = page.locator("tr[data-device='dev-a']")
    assert dev_a.locator(".online").inner_text() == "online"
    assert dev_a.locator(".gateway").inner_text() == "gw-1"
    assert dev_a.locator(".address").inner_text() == gw.registry.find_device("dev-a").vpn_address
    assert dev_a.locator(".expires").inner_text()[:2] == "20"  # a date, not "none"
    assert page.locator("tr[data-device='dev-b'] .online").inner_text() == "offline"
    page.wait_for_selector("#updated:has-text('updated')")  # the table has refreshed itself
    _shot(page, "fleet.png")
    assert token not in page.content()

    # The device goes away: the registry marks it offline and the open page follows, unreloaded.
    page.evaluate("window.stillTheSamePage = true")
    devices["dev-a"].client.stop()
    eventually(lambda: gw.db("dev-a")[0] is False, "dev-a offline in the registry", 15)
    page.wait_for_selector("tr[data-device='dev-a'] .state.off", timeout=15000)
    assert page.evaluate("window.stillTheSamePage") is True
    assert dev_a.locator(".last-seen").inner_text().endswith(" UTC")
    _shot(page, "fleet-offline.png")
    assert token not in api.log()


def test_the_device_page_shows_the_agent_and_restart_asks_first(lab, browser):
    gw, api, _ = lab
    token = api.token("acme-ops", "acme", read_only=False)
    page = browser.new_page()
    _sign_in(page, token)
    page.click("tr[data-device='dev-a'] a")
    page.wait_for_url(BASE + "/dashboard/devices/dev-a")
    agent = json.loads(page.inner_text("#agent"))
    assert (agent["device_id"], agent["customer_id"]) == ("dev-a", "acme")
    assert "GET /v1/device" in _device_saw(gw, "dev-a")
    assert token not in page.content()

    # Restart asks first: the dialog opens, Cancel sends nothing.
    before = _device_saw(gw, "dev-a")
    page.click("#restart-open")
    assert page.locator("#restart-dialog").is_visible()
    _shot(page, "restart-dialog.png", full_page=False)  # the modal's view
    page.click("#restart-cancel")
    assert not page.locator("#restart-dialog").is_visible()
    assert page.url == BASE + "/dashboard/devices/dev-a"
    assert _device_saw(gw, "dev-a")[len(before) :] == ["GET /debug/requests"]
    # Confirmed, it reaches the device's agent through the tunnel.
    before = _device_saw(gw, "dev-a")
    page.click("#restart-open")
    page.click("#restart-confirm")
    page.wait_for_url(BASE + "/dashboard/devices/dev-a?restart=ok")
    assert "accepted" in page.inner_text("#restart-result")
    assert "POST /v1/restart" in _device_saw(gw, "dev-a")[len(before) :]

    # A POST without the CSRF token (or with a made-up one) is refused; nothing reaches it.
    before = _device_saw(gw, "dev-a")
    assert _post(page, "/dashboard/devices/dev-a/restart", {}) == 403
    assert _post(page, "/dashboard/devices/dev-a/restart", {"csrf": "A" * 43}) == 403
    assert _post(page, "/dashboard/logout", {}) == 403  # still signed in after it
    assert _device_saw(gw, "dev-a")[len(before) :] == ["GET /debug/requests"]

    # Who called what, when, status and bytes: the device's audit on its page.
    def audited() -> bool:
        page.goto(BASE + "/dashboard/devices/dev-a")
        return "POST /dashboard/devices/dev-a/restart" in page.inner_text("#audit")

    eventually(audited, "the restart in the device's audit", 10)
    restart_row = page.locator("#audit tr", has_text="POST /dashboard/devices/dev-a/restart")
    cells = restart_row.first.locator("td").all_inner_texts()
    assert cells[1] == "acme-ops" and cells[3] == "303" and cells[4].endswith(" out")
    _shot(page, "device.png")


def test_another_customers_device_is_the_same_404_and_read_only_cannot_restart(lab, browser):
    gw, api, _ = lab
    page = browser.new_page()
    _sign_in(page, api.token("acme-ro", "acme"))
    foreign = page.goto(BASE + "/dashboard/devices/dev-g")
    foreign_page = page.content()
    unknown = page.goto(BASE + "/dashboard/devices/nosuch")
    assert (foreign.status, unknown.status) == (404, 404)
    assert foreign_page == page.content()
    _shot(page, "not-found.png")

    page.goto(BASE + "/dashboard/devices/dev-a")
    assert page.locator("#agent").is_visible() and page.locator("#restart-open").count() == 0
    assert page.goto(BASE + "/dashboard/devices/dev-a/restart").status == 403
    page.goto(BASE + "/dashboard/devices/dev-a")
    before = {d: _device_saw(gw, d) for d in ("dev-a", "dev-g")}
    # With a valid CSRF token: refused for being read-only, and 404 for a foreign device.
    assert _post(page, "/dashboard/devices/dev-a/restart", {"csrf": _csrf(page)}) == 403
    assert _post(page, "/dashboard/devices/dev-g/restart", {"csrf": _csrf(page)}) == 404
    for device, seen in before.items():
        assert _device_saw(gw, device)[len(seen) :] == ["GET /debug/requests"], device


def test_sign_out_and_revocation_end_the_session(lab, browser):
    _, api, _ = lab
    page = browser.new_page()
    _sign_in(page, api.token("acme-out", "acme"))
    page.click("form[action='/dashboard/logout'] button")
    page.wait_for_url(BASE + "/dashboard/login")
    assert not [c for c in browser.cookies() if c["name"] == "__Host-ivpn_session"]
    page.goto(BASE + "/dashboard/")
    assert page.url == BASE + "/dashboard/login"
    assert page.evaluate("async () => (await fetch('/dashboard/fleet.json')).status") == 401

    # A revoked token ends its sessions at once: the open fleet page goes to the sign-in form.
    token = api.token("acme-revoked", "acme")
    _sign_in(page, token)
    with Registry(api.dsn) as reg:
        token_id = next(t.id for t in reg.list_tokens("acme") if t.name == "acme-revoked")
        reg.revoke_token(token_id, actor="test")
    page.wait_for_url(BASE + "/dashboard/login", timeout=10000)
    assert page.evaluate("async () => (await fetch('/dashboard/fleet.json')).status") == 401

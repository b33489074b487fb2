"""gateway_routes.Routes against a real kernel: /32 host routes on tuns in a throwaway namespace."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.netns import Underlay

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

REPO = Path(__file__).resolve().parents[2]

# Routes works in the namespace of its process, so the steps run in one there.
SCRIPT = textwrap.dedent(
    """
    import subprocess, sys
    from iotistic_vpn.gateway.routes import RouteError, Routes

    def tun(name, up=True):
        subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tun"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)

    def show():
        out = subprocess.run(["ip", "-4", "route", "show", "100.64.0.2"], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[out.index("dev") + 1] if "dev" in out else None

    tun("tun0"); tun("tun1")
    routes = Routes()
    routes.replace("100.64.0.2", "tun0")
    print("first", show())
    routes.replace("100.64.0.2", "tun1")  # the device moved to the other instance
    print("moved", show())
    print("stale delete", routes.delete("100.64.0.2", "tun0"), show())
    # The instance of tun1 restarts: its tun is made again under a new index.
    subprocess.run(["ip", "link", "del", "tun1"], check=True)
    tun("tun1")
    routes.replace("100.64.0.2", "tun1")
    print("remade", show())
    print("delete", routes.delete("100.64.0.2", "tun1"), show())
    try:
        routes.replace("100.64.0.2", "tun9")
    except RouteError as exc:
        print("error", exc)
    """
)


def test_routes_follow_the_device_and_survive_a_remade_tun(tmp_path):
    with Underlay(tmp_path) as ul:
        ns = ul.namespace("gw", plugged=False)
        env = {**os.environ, "PYTHONPATH": str(REPO / "python_plugins")}
        out = ns.run([sys.executable, "-c", SCRIPT], env=env).stdout.splitlines()
    assert out == [
        "first tun0",
        "moved tun1",
        "stale delete False tun1",  # a late delete from the old instance leaves the new route
        "remade tun1",
        "delete True None",
        "error route 100.64.0.2/32 dev tun9: no interface tun9",
    ]

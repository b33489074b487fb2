"""The lab's stand-in device agent, as the openvpn_device role ships it (one copy, in the role)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

STANDIN = Path(__file__).resolve().parents[2] / "roles/openvpn_device/files/device_agent_standin.py"


def load_standin():
    """Import the role's file as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("device_agent_standin", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

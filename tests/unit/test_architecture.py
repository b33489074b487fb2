"""The package's dependency rules (docs/architecture.md), read from the code's own imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "python_plugins" / "iotistic_vpn"
DOMAIN = ("conventions", "errors", "validation", "addressing", "crldir", "spool", "tokens",
          "streams", "pki", "registry", "provisioning", "enrollment", "enroll_client",
          "bundle")  # fmt: skip
ADAPTERS = ("gateway", "cli", "api")


def _imports(path: Path) -> set[str]:
    """The package modules a file imports, as dotted names below iotistic_vpn."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    here = list(rel[:-1])  # the folder a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("iotistic_vpn"):
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                found.add(".".join(target))
            else:  # `from . import x`
                found.update(alias.name for alias in node.names)
    return found


def _files(top: str) -> list[Path]:
    path = PACKAGE / top
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


@pytest.mark.parametrize("top", DOMAIN)
def test_the_domain_never_imports_an_adapter(top):
    for path in _files(top):
        bad = {m for m in _imports(path) if m.split(".")[0] in ADAPTERS}
        assert not bad, f"{path.relative_to(PACKAGE)} imports adapter module(s) {sorted(bad)}"


def test_private_names_stay_inside_their_folder():
    # pki/device.py may use pki/keys.py's helpers; nothing outside pki/ may.
    for path in PACKAGE.rglob("*.py"):
        in_subpackage = path.parent != PACKAGE
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            same_folder = node.level == 1 and in_subpackage
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert same_folder or not private, (
                f"{path.relative_to(PACKAGE)} imports private {private} from another part"
            )


def test_the_gateway_agent_and_id_checks_run_without_cryptography():
    # Gateways run the agent on Debian's python3 without python3-cryptography.
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import iotistic_vpn.gateway.agent, iotistic_vpn.gateway.__main__\n"
        "from iotistic_vpn import validation\n"
        "print(validation.device_id('pump-1'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pump-1"

"""Every module documents itself: ansible-doc parses it, with the options and returns it has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ansible_run import REPO

MODULES = sorted(p.stem for p in (REPO / "python_plugins/modules").glob("vpn_*.py"))
ANSIBLE_DOC = str(Path(sys.executable).with_name("ansible-doc"))


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_reads_the_module(module):
    proc = subprocess.run(
        [ANSIBLE_DOC, "--json", module], capture_output=True, text=True, cwd=REPO,
        env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": str(Path(sys.executable).parent)},
        check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[module]
    assert doc["doc"]["short_description"]
    assert doc["doc"]["options"], f"{module} documents no options"
    assert doc["examples"].strip()
    assert doc["return"], f"{module} documents no return values"
    if "login_password" in doc["doc"]["options"]:
        # Connection options come from the shared fragment, identical for every module.
        assert doc["doc"]["options"]["db"]["default"] == "iotistic_vpn"

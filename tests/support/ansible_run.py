"""Run a playbook through the real ansible-playbook and read back what each task did.

The json callback gives per-task results and the play recap, so module tests assert on
`changed`, `diff` and error messages exactly as a user would see them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass
class PlaybookRun:
    returncode: int
    stats: dict
    tasks: dict[str, dict]  # task name -> result on localhost
    stdout: str
    stderr: str

    @property
    def changed(self) -> int:
        return sum(host["changed"] for host in self.stats.values())

    @property
    def failed(self) -> int:
        return sum(host["failures"] + host["unreachable"] for host in self.stats.values())


def run_playbook(
    tasks: list[dict] | str | Path,
    tmp_path: Path,
    *,
    check: bool = False,
    diff: bool = False,
    extra_vars: dict | None = None,
    env: dict[str, str] | None = None,
) -> PlaybookRun:
    """Run tasks (a list, YAML text, or a playbook file) on localhost; return the parsed result."""
    if isinstance(tasks, Path):
        playbook = tasks
    else:
        if isinstance(tasks, str):
            tasks = yaml.safe_load(textwrap.dedent(tasks))
        play = [
            {"name": "Module under test", "hosts": "localhost", "gather_facts": False,
             "tasks": tasks}
        ]  # fmt: skip
        playbook = tmp_path / "playbook.yml"
        playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    cmd = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        str(playbook),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    full_env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-tmp"),
        **(env or {}),
    }
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=600, check=False
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        msg = f"ansible-playbook printed no JSON:\n{proc.stdout}\n{proc.stderr}"
        raise AssertionError(msg) from exc
    results = {}
    for play_report in report["plays"]:
        for task in play_report["tasks"]:
            results[task["task"]["name"]] = task["hosts"].get("localhost", {})
    return PlaybookRun(proc.returncode, report["stats"], results, proc.stdout, proc.stderr)


def module_argument_spec(name: str, monkeypatch) -> dict:
    """Run the module's main() just far enough to capture what it gives AnsibleModule."""
    import ansible.module_utils

    monkeypatch.setattr(
        ansible.module_utils,
        "__path__",
        [*ansible.module_utils.__path__, str(REPO / "python_plugins" / "module_utils")],
    )
    path = REPO / "python_plugins" / "modules" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_argspec_of_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    captured: dict = {}

    class Captured(Exception):
        pass

    def fake_module(**kwargs):
        captured.update(kwargs)
        raise Captured

    monkeypatch.setattr(module, "AnsibleModule", fake_module)
    with pytest.raises(Captured):
        module.main()
    return captured["argument_spec"]

"""vpn_ca through real ansible-playbook: check, real, real, check; diff; offline root; errors."""

from __future__ import annotations

import ast
import stat
import subprocess

import pytest
import yaml

from tests.support.ansible_run import REPO, module_argument_spec, run_playbook

pytestmark = pytest.mark.ansible


def test_check_then_create_then_nothing_to_do(tmp_path):
    ca = tmp_path / "ca"
    task = {"vpn_ca": {"path": str(ca), "passphrase": "s3cret"}}
    run = run_playbook(
        [
            {"name": "Plan the CA.", **task, "check_mode": True, "diff": True},
            {"name": "Look for the CA.", "ansible.builtin.stat": {"path": str(ca)}},
            {"name": "Create the CA.", **task, "diff": True},
            {"name": "Create the CA again.", **task, "diff": True},
            {"name": "Plan the CA again.", **task, "check_mode": True},
        ],
        tmp_path,
    )
    assert run.failed == 0, run.stdout
    planned, looked, created, again, planned_again = (
        run.tasks[name]
        for name in ("Plan the CA.", "Look for the CA.", "Create the CA.",
                     "Create the CA again.", "Plan the CA again.")
    )  # fmt: skip
    assert planned["changed"] and planned["created"] == ["root key", "root", "issuing", "chain"]
    assert planned["diff"]["before"] == {"root": None, "issuing": None}
    assert looked["stat"]["exists"] is False  # check mode wrote nothing
    assert created["changed"] and created["created"] == planned["created"]
    assert created["diff"]["after"]["issuing"]["fingerprint"] == created["issuing"]["fingerprint"]
    assert not again["changed"] and again["created"] == []
    assert again["diff"]["before"] == again["diff"]["after"]
    assert not planned_again["changed"]
    assert again["issuing"] == created["issuing"] and again["root"] == created["root"]
    assert created["key_type"] == "ec-p256"
    assert created["issuing"]["subject"] == "CN=Iotistic VPN Issuing CA"
    for key in ("root.key", "ca.key"):
        assert stat.S_IMODE((ca / key).stat().st_mode) == 0o600
    # The passphrase never appears in what Ansible prints.
    assert "s3cret" not in run.stdout
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca / "root.crt"), str(ca / "ca.crt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_offline_root_key_and_errors_that_name_the_value(tmp_path):
    ca, offline = tmp_path / "ca", tmp_path / "offline" / "root.key"
    task = {
        "path": str(ca), "root_key_path": str(offline), "key_type": "ec-p384",
        "passphrase": "right",
    }  # fmt: skip
    first = run_playbook([{"name": "Create the CA.", "vpn_ca": task}], tmp_path)
    assert first.failed == 0 and offline.exists() and not (ca / "root.key").exists()
    offline.unlink()  # back to the safe
    run = run_playbook(
        [
            {"name": "Load with the root key offline.", "vpn_ca": task},
            {
                "name": "Use a wrong passphrase.",
                "vpn_ca": {**task, "passphrase": "guess"},
                "ignore_errors": True,
            },
            {
                "name": "Lose the issuing CA.",
                "file": {"path": str(ca / "ca.crt"), "state": "absent"},
            },
            {"name": "Renew without the root key.", "vpn_ca": task, "ignore_errors": True},
            {
                "name": "Ask for an unknown key type.",
                "vpn_ca": {"path": str(tmp_path / "other"), "key_type": "rsa-1024"},
                "ignore_errors": True,
            },
        ],
        tmp_path,
    )
    assert not run.tasks["Load with the root key offline."]["changed"]
    wrong = run.tasks["Use a wrong passphrase."]
    assert wrong["failed"] and wrong["msg"] == (
        f"invalid passphrase for private key '{ca / 'ca.key'}': "
        "wrong passphrase, or the key is corrupt"
    )
    no_root = run.tasks["Renew without the root key."]
    assert no_root["failed"] and no_root["msg"] == (
        f"invalid root CA key '{offline}': is needed to sign a new issuing CA but is not there "
        "(bring the offline key)"
    )
    unknown = run.tasks["Ask for an unknown key type."]
    assert unknown["failed"] and "rsa-1024" in unknown["msg"] and "ec-p256" in unknown["msg"]
    assert not (tmp_path / "other").exists()


# -- every PKI module's DOCUMENTATION matches its argument_spec (what ansible-doc shows users) --

MODULES = REPO / "python_plugins" / "modules"


def _fragment_options(name: str) -> dict:
    """The options a doc fragment of python_plugins/doc_fragments adds."""
    tree = ast.parse((MODULES.parent / "doc_fragments" / f"{name}.py").read_text())
    text = next(
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DOCUMENTATION"
    )
    return yaml.safe_load(text)["options"]


def _compare(doc: dict, spec: dict, where: str) -> list[str]:
    problems = []
    for option in sorted(set(doc) | set(spec)):
        if option not in doc or option not in spec:
            problems.append(f"{where}{option}: only in {'spec' if option in spec else 'doc'}")
            continue
        for key in ("type", "default", "choices", "elements"):
            documented, declared = doc[option].get(key), spec[option].get(key)
            if documented != declared:
                problems.append(f"{where}{option}.{key}: doc {documented!r} spec {declared!r}")
        if bool(doc[option].get("required")) != bool(spec[option].get("required")):
            problems.append(f"{where}{option}.required differs")
        if "options" in spec[option]:
            problems += _compare(
                doc[option].get("suboptions", {}), spec[option]["options"], f"{option}."
            )
    return problems


@pytest.mark.parametrize(
    "name",
    ["vpn_ca", "vpn_device_cert", "vpn_gateway_cert", "vpn_crl", "vpn_registry", "vpn_provision"],
)
def test_documentation_matchesmodule_argument_spec(name, monkeypatch):
    docs = ast.parse((MODULES / f"{name}.py").read_text())
    texts = {
        node.targets[0].id: node.value.value
        for node in docs.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    documentation = yaml.safe_load(texts["DOCUMENTATION"])
    yaml.safe_load(texts["EXAMPLES"])
    assert yaml.safe_load(texts["RETURN"])
    options = dict(documentation["options"])
    for fragment in documentation.get("extends_documentation_fragment", []):
        options.update(_fragment_options(fragment))
    spec = module_argument_spec(name, monkeypatch)
    assert _compare(options, spec, "") == []
    secrets = {o for o, s in spec.items() if s.get("no_log")}
    assert secrets == {o for o in spec if "passphrase" in o or o in ("dsn", "login_password")}


def test_a_path_that_cannot_be_written_fails_in_one_line_naming_the_file(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the CA directory should go\n")
    run = run_playbook(
        [
            {
                "name": "Create a CA under a file.",
                "vpn_ca": {"path": str(blocker / "ca")},
                "ignore_errors": True,
            }
        ],
        tmp_path,
    )
    failed = run.tasks["Create a CA under a file."]
    assert failed["failed"]
    assert failed["msg"].startswith(f"cannot read or write {blocker}")
    assert "Traceback" not in run.stdout
    assert blocker.read_text() == "a file where the CA directory should go\n"

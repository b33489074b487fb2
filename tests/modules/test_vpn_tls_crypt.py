"""vpn_tls_crypt through real ansible-playbook: server key once, client keys kept or replaced."""

from __future__ import annotations

import ast
import shutil
import stat
import subprocess

import pytest
import yaml

from iotistic_vpn.pki import tlscrypt
from tests.modules.test_vpn_ca import MODULES, _compare
from tests.support.ansible_run import module_argument_spec, run_playbook

pytestmark = pytest.mark.ansible

CLIENTS = [{"customer": "acme", "device": "pump-1"}, {"customer": "acme", "device": "pump-2"}]


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_check_real_real_check_makes_each_key_once(tmp_path):
    server, dest = tmp_path / "pki" / "tc-server.key", tmp_path / "pki" / "devices"
    args = {"server_key_path": str(server), "dest": str(dest), "clients": CLIENTS}
    run = run_playbook(
        [
            {"name": "Plan.", "vpn_tls_crypt": args, "check_mode": True, "diff": True},
            {"name": "Look.", "stat": {"path": str(tmp_path / "pki")}},
            {"name": "Make.", "vpn_tls_crypt": args, "diff": True},
            {"name": "Make again.", "vpn_tls_crypt": args},
            {"name": "Plan again.", "vpn_tls_crypt": args, "check_mode": True},
        ],
        tmp_path,
    )
    assert run.failed == 0, run.stdout
    t = run.tasks
    plan, made, again = t["Plan."], t["Make."], t["Make again."]
    assert (
        plan["changed"]
        and plan["server_key_created"]
        and plan["created"]
        == [
            "acme/pump-1",
            "acme/pump-2",
        ]
    )
    assert plan["diff"]["before"] == {
        "server_key": "absent",
        "clients": {"acme/pump-1": "absent", "acme/pump-2": "absent"},
    }
    assert t["Look."]["stat"]["exists"] is False  # check mode wrote nothing
    assert made["changed"] and made["server_key_created"] and len(made["created"]) == 2
    assert made["diff"]["after"]["clients"] == {"acme/pump-1": "present", "acme/pump-2": "present"}
    assert not again["changed"] and not again["server_key_created"]
    assert [c["status"] for c in again["clients"]] == ["unchanged", "unchanged"]
    assert not t["Plan again."]["changed"]
    assert "BEGIN OpenVPN" not in run.stdout  # no key material in any result

    keys = [dest / "acme" / "pump-1.tls-crypt-v2.key", dest / "acme" / "pump-2.tls-crypt-v2.key"]
    assert [c["path"] for c in made["clients"]] == [str(k) for k in keys]
    assert mode(server) == 0o600 and all(mode(k) == 0o600 for k in keys)
    kcs = {tlscrypt.unwrap_client_key(server.read_bytes(), k.read_bytes()).kc for k in keys}
    assert len(kcs) == 2  # each device has its own Kc


@pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn not installed")
def test_openvpn_accepts_the_server_key(tmp_path):
    server = tmp_path / "tc-server.key"
    run = run_playbook(
        [{"name": "Make.", "vpn_tls_crypt": {"server_key_path": str(server)}}], tmp_path
    )
    assert run.failed == 0, run.stdout
    out = tmp_path / "client.key"
    # OpenVPN wraps a client key under our server key and unwraps it again as a self-test.
    subprocess.run(
        ["openvpn", "--tls-crypt-v2", str(server), "--genkey", "tls-crypt-v2-client", str(out)],
        capture_output=True, check=True, timeout=10,
    )  # fmt: skip
    tlscrypt.unwrap_client_key(server.read_bytes(), out.read_bytes())


def test_foreign_and_damaged_keys_are_replaced_the_server_key_never(tmp_path):
    server, dest = tmp_path / "tc-server.key", tmp_path / "devices"
    server.write_bytes(tlscrypt.generate_server_key())
    server.chmod(0o644)
    original = server.read_bytes()
    (dest / "acme").mkdir(parents=True)
    foreign = dest / "acme" / "pump-1.tls-crypt-v2.key"
    foreign.write_bytes(tlscrypt.generate_client_key(tlscrypt.generate_server_key()))
    damaged = dest / "acme" / "pump-2.tls-crypt-v2.key"
    damaged.write_text("not a key\n")
    good = dest / "acme" / "pump-3.tls-crypt-v2.key"
    good.write_bytes(tlscrypt.generate_client_key(original))
    good.chmod(0o644)
    good_before = good.read_bytes()
    clients = [*CLIENTS, {"customer": "acme", "device": "pump-3"}]
    args = {"server_key_path": str(server), "dest": str(dest), "clients": clients}
    run = run_playbook(
        [
            {"name": "Check.", "vpn_tls_crypt": args, "check_mode": True, "diff": True},
            {"name": "Fix.", "vpn_tls_crypt": args},
            {"name": "Again.", "vpn_tls_crypt": args},
        ],
        tmp_path,
    )
    assert run.failed == 0, run.stdout
    check, fix = run.tasks["Check."], run.tasks["Fix."]
    assert check["diff"]["before"]["clients"] == {
        "acme/pump-1": "foreign",
        "acme/pump-2": "foreign",
        "acme/pump-3": "present, mode not 0600",
    }
    assert fix["replaced"] == ["acme/pump-1", "acme/pump-2"] and fix["created"] == []
    assert [c["status"] for c in fix["clients"]] == ["replaced", "replaced", "unchanged"]
    assert not run.tasks["Again."]["changed"]
    assert server.read_bytes() == original and mode(server) == 0o600
    assert good.read_bytes() == good_before and mode(good) == 0o600
    for key in (foreign, damaged):
        assert mode(key) == 0o600
        tlscrypt.unwrap_client_key(original, key.read_bytes())


def test_identity_metadata_names_the_device_and_replaces_other_keys(tmp_path):
    server, dest = tmp_path / "tc-server.key", tmp_path / "devices"
    base = {"server_key_path": str(server), "dest": str(dest), "clients": CLIENTS[:1]}
    run = run_playbook(
        [
            {"name": "Timestamp.", "vpn_tls_crypt": base},
            {"name": "Identity.", "vpn_tls_crypt": {**base, "metadata": "identity"}},
            {"name": "Identity again.", "vpn_tls_crypt": {**base, "metadata": "identity"}},
        ],
        tmp_path,
    )
    assert run.failed == 0, run.stdout
    assert run.tasks["Identity."]["replaced"] == ["acme/pump-1"]
    assert not run.tasks["Identity again."]["changed"]
    key = tlscrypt.unwrap_client_key(
        server.read_bytes(), (dest / "acme" / "pump-1.tls-crypt-v2.key").read_bytes()
    )
    assert (key.metadata_type, key.metadata) == (0, b"urn:iotistic:acme:pump-1")


def test_bad_input_fails_naming_the_value_and_writes_nothing(tmp_path):
    missing, damaged = tmp_path / "missing.key", tmp_path / "damaged.key"
    damaged.write_text("-----BEGIN OpenVPN tls-crypt-v2 server key-----\nAAAA\n"
                       "-----END OpenVPN tls-crypt-v2 server key-----\n")  # fmt: skip
    dest = tmp_path / "devices"
    cases = {
        "No server key.": {
            "server_key_path": str(missing), "create_server_key": False,
            "dest": str(dest), "clients": CLIENTS,
        },
        "Damaged server key.": {"server_key_path": str(damaged), "dest": str(dest),
                                "clients": CLIENTS},
        "Bad device.": {"server_key_path": str(missing), "dest": str(dest),
                        "clients": [{"customer": "acme", "device": "Pump_1"}]},
        "Twice.": {"server_key_path": str(missing), "dest": str(dest),
                   "clients": [CLIENTS[0], {"customer": "other", "device": "pump-1"}]},
        "No dest.": {"server_key_path": str(missing), "clients": CLIENTS},
    }  # fmt: skip
    run = run_playbook(
        [{"name": n, "vpn_tls_crypt": a, "ignore_errors": True} for n, a in cases.items()],
        tmp_path,
    )
    msgs = {n: run.tasks[n]["msg"] for n in cases}
    assert msgs == {
        "No server key.": f"invalid tls-crypt-v2 server key '{missing}': does not exist and "
        "create_server_key is false (make it with the CA first)",
        "Damaged server key.": f"invalid tls-crypt-v2 server key '{damaged}': must hold 128 bytes",
        "Bad device.": "invalid device id 'Pump_1': use 1-63 lower-case letters, digits and "
        "inner hyphens (a DNS label)",
        "Twice.": "invalid device id 'pump-1': is listed twice in clients",
        "No dest.": "missing parameter(s) required by 'clients': dest",
    }
    assert not missing.exists() and not dest.exists()


def test_documentation_matches_argument_spec(monkeypatch):
    tree = ast.parse((MODULES / "vpn_tls_crypt.py").read_text())
    texts = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    documentation = yaml.safe_load(texts["DOCUMENTATION"])
    yaml.safe_load(texts["EXAMPLES"])
    returned = yaml.safe_load(texts["RETURN"])
    spec = module_argument_spec("vpn_tls_crypt", monkeypatch)
    assert _compare(documentation["options"], spec, "") == []
    assert set(returned) == {"server_key_path", "server_key_created", "clients", "created",
                             "replaced"}  # fmt: skip

"""vpn_token through the real ansible-playbook against the throwaway PostgreSQL."""

from __future__ import annotations

import stat

import pytest

from iotistic_vpn.registry import Registry
from tests.support.ansible_run import run_playbook

pytestmark = [pytest.mark.ansible, pytest.mark.postgres]


def _task(title: str, **args) -> dict:
    return {"name": title, "vpn_token": {"dsn": "{{ registry_dsn }}", **args}}


@pytest.fixture
def acme(registry_dsn):
    with Registry(registry_dsn) as reg:
        reg.ensure_customer("acme", actor="t")
        reg.provision_devices("acme", ["pump-1"], actor="t")
    return registry_dsn


def test_check_then_create_then_nothing_to_do_and_the_token_works(acme, tmp_path):
    dest = tmp_path / "billing.token"
    task = {"name": "billing", "customer": "acme", "dest": str(dest), "ports": [48484, 22]}
    run = run_playbook(
        [
            {**_task("Plan the token.", **task), "check_mode": True, "diff": True},
            _task("Create the token.", **task),
            _task("Create it again.", **task),
            {**_task("Plan it again.", **task), "check_mode": True},
        ],
        tmp_path,
        extra_vars={"registry_dsn": acme},
    )
    assert run.returncode == 0, run.stdout
    planned, created, again, planned_again = (
        run.tasks[n]
        for n in ("Plan the token.", "Create the token.", "Create it again.", "Plan it again.")
    )
    assert planned["changed"] and not planned["created"]
    assert planned["diff"]["before"] == {"token": "none", "scope": None}
    assert created["changed"] and created["created"] and "token" not in created
    assert not again["changed"] and not again["created"]
    assert again["token_id"] == created["token_id"]
    assert not planned_again["changed"]
    assert created["scope"] == {"customer_id": "acme", "devices": None, "ports": [22, 48484],
                                "read_only": True, "expires_at": None}  # fmt: skip
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    value = dest.read_text().strip()
    assert value not in run.stdout  # the secret never reaches Ansible's output
    with Registry(acme) as reg:
        token = reg.authenticate(value)
        assert token.id == created["token_id"] and token.may("GET", 22)
        assert len(reg.list_tokens("acme")) == 1


def test_revoke_and_refusals_that_name_the_value(acme, tmp_path):
    run = run_playbook(
        [
            _task("Create an operator token.", name="platform"),
            {
                **_task("Change its scope silently.", name="platform", read_only=False),
                "ignore_errors": True,
            },
            _task("Revoke it.", name="platform", state="revoked"),
            _task("Revoke it again.", name="platform", state="revoked"),
            {
                **_task(
                    "Expire without a zone.", name="x", customer="acme", expires_at="2030-01-01"
                ),
                "ignore_errors": True,
            },
            {
                **_task("Scope an unknown customer.", name="x", customer="nobody"),
                "ignore_errors": True,
            },
            {
                **_task("Scope an operator to devices.", name="x", devices=["pump-1"]),
                "ignore_errors": True,
            },
        ],
        tmp_path,
        extra_vars={"registry_dsn": acme},
    )
    t = run.tasks
    made = t["Create an operator token."]
    assert made["changed"] and made["token"].startswith("ivpn_")
    assert t["Change its scope silently."]["msg"] == (
        "invalid token 'platform': a live token of this name has another scope; revoke it first"
    )
    assert t["Revoke it."]["changed"] and not t["Revoke it again."]["changed"]
    assert "give a time zone" in t["Expire without a zone."]["msg"]
    assert "customer 'nobody' not found" in t["Scope an unknown customer."]["msg"]
    assert "an operator token spans devices" in t["Scope an operator to devices."]["msg"]
    with Registry(acme) as reg:
        assert reg.authenticate(made["token"]) is None
        assert reg.list_tokens() == []

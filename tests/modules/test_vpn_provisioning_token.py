"""vpn_provisioning_token through the real ansible-playbook against the throwaway PostgreSQL."""

from __future__ import annotations

import stat

import pytest

from iotistic_vpn.registry import Registry
from tests.support.ansible_run import run_playbook

pytestmark = [pytest.mark.ansible, pytest.mark.postgres]

EXPIRES = "2031-01-31T00:00:00+00:00"


def _task(title: str, **args) -> dict:
    return {"name": title, "vpn_provisioning_token": {"dsn": "{{ registry_dsn }}", **args}}


@pytest.fixture
def acme(registry_dsn):
    with Registry(registry_dsn) as reg:
        reg.ensure_customer("acme", actor="t")
    return registry_dsn


def test_check_then_create_then_nothing_to_do_and_the_token_works(acme, tmp_path):
    dest = tmp_path / "factory.token"
    task = {"name": "factory", "customer": "acme", "expires_at": EXPIRES, "max_uses": 50,
            "device_pattern": "pump-*", "dest": str(dest)}  # fmt: skip
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
    assert (again["changed"], again["created"], again["token_id"]) == (
        False, False, created["token_id"],
    )  # fmt: skip
    assert not planned_again["changed"]
    assert created["scope"] == {"customer_id": "acme", "expires_at": EXPIRES, "max_uses": 50,
                                "uses": 0, "device_pattern": "pump-*"}  # fmt: skip
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    value = dest.read_text().strip()
    assert value not in run.stdout  # the secret never reaches Ansible's output
    with Registry(acme) as reg:
        token, now = reg.provisioning_token(value)
        assert token.id == created["token_id"] and token.usable(now)
        assert len(reg.list_provisioning_tokens("acme")) == 1


def test_revoke_and_refusals_that_name_the_value(acme, tmp_path):
    made = {"name": "line", "customer": "acme", "expires_at": EXPIRES}
    run = run_playbook(
        [
            _task("Create a token.", **made),
            {**_task("Change its uses silently.", **made, max_uses=9), "ignore_errors": True},
            {**_task("Revoke it (check).", name="line", customer="acme", state="revoked"),
             "check_mode": True},
            _task("Revoke it.", name="line", customer="acme", state="revoked"),
            _task("Revoke it again.", name="line", customer="acme", state="revoked"),
            {**_task("A regex for a glob.", **{**made, "name": "x"}, device_pattern="pump-[0-9]+"),
             "ignore_errors": True},
            {**_task("Expire without a zone.", **{**made, "name": "x", "expires_at": "2031-01-01"}),
             "ignore_errors": True},
            {**_task("No expiry.", name="x", customer="acme"), "ignore_errors": True},
            {**_task("An unknown customer.", **{**made, "customer": "nobody"}),
             "ignore_errors": True},
        ],
        tmp_path,
        extra_vars={"registry_dsn": acme},
    )  # fmt: skip
    t = run.tasks
    assert t["Create a token."]["changed"] and t["Create a token."]["token"].startswith("ivpp_")
    assert t["Change its uses silently."]["msg"] == (
        "invalid provisioning token 'line': a live token of this name has another scope;"
        " revoke it first"
    )
    assert t["Revoke it (check)."]["changed"]
    assert t["Revoke it."]["changed"] and not t["Revoke it again."]["changed"]
    assert "invalid device pattern 'pump-[0-9]+'" in t["A regex for a glob."]["msg"]
    assert "give a time zone" in t["Expire without a zone."]["msg"]
    assert "expires_at" in t["No expiry."]["msg"]
    assert "customer 'nobody' not found" in t["An unknown customer."]["msg"]
    with Registry(acme) as reg:
        assert reg.list_provisioning_tokens("acme") == []
        assert len(reg.list_provisioning_tokens("acme", include_revoked=True)) == 1

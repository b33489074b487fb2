"""The production inventory: the real aws_ec2 plugin on instances shaped like the stack's, and
group_vars that render the stack's outputs into the same variables a gateway gets at boot."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import fragment_loader, init_plugin_loader, inventory_loader
from ansible.utils.plugin_docs import get_docstring

from tests.infra.stackreport import REPO, Stack

PRODUCTION = REPO / "inventory" / "production"
AWS_EC2 = PRODUCTION / "gateways.aws_ec2.yml"
GATEWAY_IP = "10.50.128.10"


@pytest.fixture(scope="module")
def aws_ec2():
    """The amazon.aws.aws_ec2 plugin as ansible-core loads it."""
    init_plugin_loader()
    return inventory_loader


def test_inventory_uses_only_documented_aws_ec2_options(aws_ec2):
    config = yaml.safe_load(AWS_EC2.read_text())
    assert config["plugin"] == "amazon.aws.aws_ec2"
    path = aws_ec2.find_plugin("amazon.aws.aws_ec2")
    doc, *_ = get_docstring(path, fragment_loader, collection_name="amazon.aws")
    assert set(config) - {"plugin"} <= set(doc["options"])
    assert AWS_EC2.name.endswith("aws_ec2.yml"), "the plugin only reads *aws_ec2.yml files"
    assert config["hostnames"] == ["private-ip-address"]
    assert {g["key"] for g in config["keyed_groups"]} >= {"tags.Role", "tags.Stack"}
    assert config["filters"]["tag:Project"] == "iotistic-vpn"


def _instance(stack: Stack) -> dict:
    """A describe-instances entry for a gateway the stack's launch template would start."""
    template = stack.one("launch_template")
    (spec,) = [s for s in template["tagSpecifications"] if s["resourceType"] == "instance"]
    subnet = stack.by_id(stack.one("asg")["vpcZoneIdentifiers"][0])
    return {
        "InstanceId": "i-0123456789abcdef0",
        "ImageId": template["imageId"],
        "PrivateIpAddress": GATEWAY_IP,
        "PrivateDnsName": "ip-10-50-128-10.eu-central-1.compute.internal",
        "Placement": {"AvailabilityZone": subnet["availabilityZone"]},
        "State": {"Name": "running"},
        "SubnetId": subnet["id"],
        "Tags": [{"Key": k, "Value": v} for k, v in spec["tags"].items()],
    }


def test_a_gateway_of_the_stack_lands_in_the_gateways_group(aws_ec2, stacks, monkeypatch):
    stack = stacks["prod"]
    monkeypatch.setenv("IOTISTIC_VPN_STACK", "prod")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    plugin = aws_ec2.get("amazon.aws.aws_ec2")
    asked = {}

    def describe(regions, include_filters, exclude_filters, strict_permissions, use_ssm):
        # Stands in for the AWS call: records the filters and returns one gateway.
        asked.update(regions=regions, filters=include_filters)
        return {"aws_ec2": [_instance(stack)]}

    monkeypatch.setattr(plugin, "require_aws_sdk", lambda **_: None)
    monkeypatch.setattr(plugin, "_set_frozen_credentials", lambda: None)
    monkeypatch.setattr(plugin, "_query", describe)
    inventory = InventoryData()
    plugin.parse(inventory, DataLoader(), str(AWS_EC2), cache=False)

    assert asked == {
        "regions": ["eu-central-1"],
        "filters": [
            {"tag:Project": "iotistic-vpn", "tag:Stack": "prod", "instance-state-name": "running"}
        ],
    }
    groups = {name: [h.name for h in g.get_hosts()] for name, g in inventory.groups.items()}
    for group in ("gateways", "role_gateway", "stack_prod", "az_eu_central_1a"):
        assert groups[group] == [GATEWAY_IP], group
    host = inventory.get_host(GATEWAY_IP)
    assert host.vars["ansible_host"] == GATEWAY_IP
    assert host.vars["iotistic_vpn_instance_id"] == "i-0123456789abcdef0"


def test_group_vars_read_only_outputs_the_stack_exports(stacks):
    used = set()
    for path in (PRODUCTION / "group_vars").glob("*.yml"):
        used |= set(re.findall(r"_iotistic_vpn_stack_outputs\.(\w+)", path.read_text()))
    assert len(used) >= 15
    for stack in stacks.values():
        assert used <= set(stack.exports), f"{stack.name} lacks {used - set(stack.exports)}"


def test_the_health_wait_reads_only_facts_the_group_vars_set():
    """playbooks/cloud_health.yml runs with this inventory (deploy-stack.yml): every stack fact
    it reads is one group_vars/all.yml renders from the stack's outputs."""
    read = set(
        re.findall(r"\biotistic_vpn_cloud_\w+", (REPO / "playbooks/cloud_health.yml").read_text())
    )
    defined = set(yaml.safe_load((PRODUCTION / "group_vars" / "all.yml").read_text()))
    assert len(read) >= 5
    assert read <= defined, read - defined


def test_pushed_and_pulled_gateways_see_the_same_cloud_variables(stacks, tmp_path):
    stack = stacks["prod"]
    user_data = yaml.safe_load(base64.b64decode(stack.one("launch_template")["userData"]))
    files = {f["path"]: f["content"] for f in user_data["write_files"]}
    at_boot = json.loads(files["/etc/iotistic-vpn/inventory/group_vars/gateways.json"])

    outputs = tmp_path / "stack-outputs.json"
    outputs.write_text(json.dumps(stack.exports))
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "group_vars").symlink_to(PRODUCTION / "group_vars")
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "gateways": {"hosts": {GATEWAY_IP: {}}},
                        "devices": {"hosts": {"acme-0001": {"gateway": GATEWAY_IP}}},
                    }
                }
            }
        )
    )
    names = {
        "gateways": [*sorted(at_boot), "ansible_user", "ansible_ssh_common_args"],
        "devices": ["ansible_ssh_common_args"],
    }
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": f"Render {group}",
                    "ansible.builtin.debug": {"msg": "{{ query('ansible.builtin.vars', *names) }}"},
                    "vars": {"names": group_names},
                    "when": f"'{group}' in group_names",
                }
                for group, group_names in names.items()
            ],
        }
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-tmp"),
        "IOTISTIC_VPN_STACK_OUTPUTS": str(outputs),
    }
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory), playbook],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rendered = {}
    for task, group in zip(json.loads(proc.stdout)["plays"][0]["tasks"], names, strict=True):
        for host, result in task["hosts"].items():
            if not result.get("skipped"):
                rendered[host] = dict(zip(names[group], result["msg"], strict=True))

    gateway = rendered[GATEWAY_IP]
    assert {name: gateway[name] for name in at_boot} == at_boot
    assert gateway["ansible_user"] == "admin"
    endpoint = stack.exports["ssh_endpoint_id"]
    assert gateway["ansible_ssh_common_args"] == (
        '-o ProxyCommand="aws ec2-instance-connect open-tunnel --region eu-central-1 '
        f'--instance-connect-endpoint-id {endpoint} --private-ip-address %h --remote-port %p" '
        "-o StrictHostKeyChecking=accept-new"
    )
    # A device is reached by jumping through the gateway that holds its tunnel.
    device_args = rendered["acme-0001"]["ansible_ssh_common_args"]
    assert f"--private-ip-address {GATEWAY_IP} --remote-port 22" in device_args
    assert f"admin@{GATEWAY_IP}" in device_args
    assert device_args.startswith('-o ProxyCommand="ssh -W %h:%p ')

"""playbooks/cloud_health.yml, the pipeline's wait after publish, through real ansible-playbook
against moto's server: an autoscaling group of gateways in its UDP target group, the API's ECS
service.

moto answers a registered, running instance `healthy` and a stopped one `unused`
(Target.InvalidState); it runs no health check of its own, so an agent that stops answering
is stood in for by a stopped instance. Every ECS service it makes reports
MOTO_ECS_SERVICE_RUNNING tasks, its one deployment COMPLETED when they reach the desired count
and IN_PROGRESS otherwise; it never reports FAILED (the circuit breaker), so a rollback is
stood in for by a service left on an older task definition than the one the deploy declared.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.support.ansible_run import REPO, run_playbook
from tests.support.moto import REGION, client, moto_server

pytestmark = pytest.mark.ansible

PLAYBOOK = REPO / "playbooks" / "cloud_health.yml"
GRACE = 5  # the group's health check grace period: the wait's bound is twice that
INTERVAL = 5  # the target group's health check interval: the wait polls at it
RUNNING = 1  # the tasks moto reports for every ECS service
GATEWAYS_OK = "Assert that enough gateways are healthy."
WAIT_GATEWAYS = (
    "Wait until at least the group's minimum of gateways pass the load balancer's health check."
)
API_OK = "Assert that the API service runs this deploy's task definition, steady."


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """moto for this module, with RUNNING tasks in every service."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(
        "127.0.0.1", log, server_env={"MOTO_ECS_SERVICE_RUNNING": str(RUNNING)}
    ) as env:
        yield env


def _stack(aws, *, min_size: int = 2, api_tasks: int = RUNNING, grace: int = GRACE) -> dict:
    """A stack as `pulumi up` leaves it (group, target group, ECS service); its facts."""
    name = f"t{uuid.uuid4().hex[:8]}"
    ec2 = client(aws, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.8.0/24", AvailabilityZone=f"{REGION}a")[
        "Subnet"
    ]["SubnetId"]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{name}-gw",
        LaunchTemplateData={"ImageId": image, "InstanceType": "t3.small"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    target_group = client(aws, "elbv2").create_target_group(
        Name=f"{name}-openvpn", Protocol="UDP", Port=1194, VpcId=vpc, TargetType="instance",
        HealthCheckProtocol="HTTP", HealthCheckPort="8089", HealthCheckPath="/healthz",
        HealthCheckIntervalSeconds=INTERVAL,
    )["TargetGroups"][0]  # fmt: skip
    asg = client(aws, "autoscaling")
    group = f"{name}-gw-0001"
    asg.create_auto_scaling_group(
        AutoScalingGroupName=group, MinSize=min_size, MaxSize=3, DesiredCapacity=min_size,
        LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
        VPCZoneIdentifier=subnet, TargetGroupARNs=[target_group["TargetGroupArn"]],
        HealthCheckType="ELB", HealthCheckGracePeriod=grace,
    )  # fmt: skip
    # A group whose name the stack's only begins: never counted for the stack's own.
    asg.create_auto_scaling_group(
        AutoScalingGroupName=f"{group}-old", MinSize=0, MaxSize=1, DesiredCapacity=0,
        LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
        VPCZoneIdentifier=subnet,
    )  # fmt: skip
    ecs = client(aws, "ecs")
    cluster = ecs.create_cluster(clusterName=f"{name}-api")["cluster"]["clusterName"]
    revisions = [
        ecs.register_task_definition(
            family=f"{name}-api",
            containerDefinitions=[{"name": "api", "image": f"api:{n}", "memory": 512}],
        )["taskDefinition"]["taskDefinitionArn"]
        for n in (1, 2)
    ]
    ecs.create_service(
        cluster=cluster, serviceName="api", taskDefinition=revisions[0], desiredCount=api_tasks
    )
    return {
        "facts": {
            "iotistic_vpn_cloud_region": REGION,
            "iotistic_vpn_cloud_gateway_asg_name": group,
            "iotistic_vpn_cloud_api_cluster_name": cluster,
            "iotistic_vpn_cloud_api_service_name": "api",
            "iotistic_vpn_cloud_api_task_definition_arn": revisions[0],
        },
        "target_group": target_group,
        "revisions": revisions,
        "instances": [
            i["InstanceId"]
            for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
                "AutoScalingGroups"
            ][0]["Instances"]
        ],
    }


def _wait(aws, tmp_path, facts: dict):
    started = time.monotonic()
    run = run_playbook(PLAYBOOK, tmp_path, extra_vars=facts, env=aws)
    return run, time.monotonic() - started


def test_a_stack_with_its_minimum_of_healthy_gateways_and_a_steady_api_passes(aws, tmp_path):
    stack = _stack(aws)
    run, _ = _wait(aws, tmp_path, stack["facts"])
    assert run.failed == 0, run.stdout
    assert run.changed == 0
    name = stack["target_group"]["TargetGroupName"]
    assert run.tasks[GATEWAYS_OK]["msg"] == (
        f"gateway target group {name}: 2 of 2 targets healthy (min_size 2)"
    )
    api = run.tasks[API_OK]["msg"]
    assert api.startswith("API service api: deployment ecs-svc/"), api
    assert api.endswith(f"completed, 1 tasks on {stack['revisions'][0]}"), api


@pytest.mark.parametrize("stopped", [1, 2], ids=["not-enough", "none"])
def test_too_few_healthy_gateways_fail_within_the_bound_naming_the_group_and_counts(
    aws, tmp_path, stopped
):
    stack = _stack(aws)
    down = stack["instances"][:stopped]
    client(aws, "ec2").stop_instances(InstanceIds=down)
    run, took = _wait(aws, tmp_path, stack["facts"])
    assert run.failed == 1
    group, arn = stack["target_group"]["TargetGroupName"], stack["target_group"]["TargetGroupArn"]
    asg = stack["facts"]["iotistic_vpn_cloud_gateway_asg_name"]
    others = ", ".join(f"{i} unused (Target.InvalidState)" for i in sorted(down))
    assert run.tasks[GATEWAYS_OK]["msg"] == (
        f"gateway target group {group} ({arn}): {2 - stopped} of 2 targets healthy after"
        f" {2 * GRACE} s, but autoscaling group {asg} needs min_size 2; not healthy: {others}"
    )
    # It polled for the bound (twice the grace period), not longer: ansible-playbook's start
    # and a poll's round trips are the rest.
    assert 2 * GRACE <= took < 2 * GRACE + 30, took
    assert API_OK not in run.tasks  # the rollout stops at the first fault


def test_a_gateway_that_turns_healthy_while_it_waits_lets_it_pass(aws, tmp_path):
    """It waits: a gateway healthy only after the first poll (a replacement that converged)."""
    stack = _stack(aws, grace=3 * INTERVAL)
    ec2 = client(aws, "ec2")
    ec2.stop_instances(InstanceIds=stack["instances"][:1])
    # Started two intervals in: after the first poll unless ansible-playbook takes longer than
    # that to start and read the group, well before the deadline (six intervals).
    later = threading.Timer(
        2 * INTERVAL, ec2.start_instances, kwargs={"InstanceIds": stack["instances"][:1]}
    )
    later.start()
    try:
        run, _ = _wait(aws, tmp_path, stack["facts"])
    finally:
        later.join()
    assert run.failed == 0, run.stdout
    assert run.tasks[GATEWAYS_OK]["msg"].endswith("2 of 2 targets healthy (min_size 2)")
    polls = run.tasks[WAIT_GATEWAYS]["attempts"]
    assert 2 <= polls <= 4, polls


def test_a_group_of_one_needs_one_healthy_gateway(aws, tmp_path):
    stack = _stack(aws, min_size=1)
    run, _ = _wait(aws, tmp_path, stack["facts"])
    assert run.failed == 0, run.stdout
    assert "1 of 1 targets healthy (min_size 1)" in run.tasks[GATEWAYS_OK]["msg"]


def _deployment(aws, facts: dict) -> str:
    (service,) = client(aws, "ecs").describe_services(
        cluster=facts["iotistic_vpn_cloud_api_cluster_name"],
        services=[facts["iotistic_vpn_cloud_api_service_name"]],
    )["services"]
    return service["deployments"][0]["id"]


def test_an_api_left_on_an_older_task_definition_fails_naming_the_rollback(aws, tmp_path):
    stack = _stack(aws)
    old, declared = stack["revisions"]
    facts = {**stack["facts"], "iotistic_vpn_cloud_api_task_definition_arn": declared}
    run, _ = _wait(aws, tmp_path, facts)
    assert run.failed == 1
    cluster, deployment = facts["iotistic_vpn_cloud_api_cluster_name"], _deployment(aws, facts)
    assert run.tasks[API_OK]["msg"] == (
        f"API service api in cluster {cluster}: deployment {deployment} COMPLETED (ECS deployment"
        f" {deployment} completed.), 1 of 1 tasks running, 1 deployment(s), task definition"
        f" {old} (this deploy declared {declared}: rolled back); deadline {2 * GRACE} s"
    )


def test_an_api_short_of_its_tasks_fails_at_the_deadline_naming_the_counts(aws, tmp_path):
    stack = _stack(aws, api_tasks=RUNNING + 1)
    run, took = _wait(aws, tmp_path, stack["facts"])
    assert run.failed == 1
    facts = stack["facts"]
    cluster, deployment = facts["iotistic_vpn_cloud_api_cluster_name"], _deployment(aws, facts)
    assert run.tasks[API_OK]["msg"] == (
        f"API service api in cluster {cluster}: deployment {deployment} IN_PROGRESS (ECS"
        f" deployment {deployment} in progress.), 1 of 2 tasks running, 1 deployment(s), task"
        f" definition {stack['revisions'][0]}; deadline {2 * GRACE} s"
    )
    # One deadline for the gateways and the API together: the gateways passed at once, so the
    # API had nearly all of it.
    assert 2 * GRACE - INTERVAL <= took < 2 * GRACE + 30, took

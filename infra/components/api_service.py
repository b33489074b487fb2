"""ApiService: the cloud (tunnel) API on ECS Fargate behind an HTTPS load balancer, its
CONNECT tunnel behind a TLS network load balancer and, with enrollment, its own HTTPS listener
behind an internal TCP network load balancer for the gateways' renewals.

The container is the repository's own image (images/api/Containerfile, built by
scripts/build-api-image.sh), pushed by the GitOps pipeline to this component's ECR repository
before `pulumi up`; stack config `api.image` names the exact tag (the pipeline sets it to the
commit's). Its settings are python -m iotistic_vpn.api's (IOTISTIC_API_*, api/settings.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from conventions import (
    API_CONNECT_PORT,
    API_CONTAINER_PORT,
    API_PUBLIC_PORT,
    API_TLS_PORT,
    DATABASE_NAME,
    POSTGRES_PORT,
    TUNNEL_SERVICE_PORT,
    tags,
)
from stackconfig import ApiSettings

from components.dns import load_balancer_alias

# TLS 1.3 with TLS 1.2 fallback: the strictest policy AWS offers that old clients still reach.
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
# Logical key -> (secret path under iotistic-vpn/<stack>/, JSON keys -> container variables).
# registry.dsn is libpq key=value text with the API's own login (a member of iotistic_api), e.g.
# "user=cloud-api password=..."; registry.ca is the RDS CA bundle (PEM). Host, port, database,
# sslmode and the root certificate's file come from the PG* variables below (libpq reads them
# for what the DSN leaves out). The tunnel client's PEMs are handed to the image's
# start script (images/api/iotistic-api-start), which writes them to the files the API's
# IOTISTIC_API_TUNNEL_CERT, _KEY and _CA settings name and unsets them.
API_SECRETS = {
    "registry": (
        "api/registry",
        {"dsn": "IOTISTIC_API_REGISTRY_DSN", "ca": "IOTISTIC_PEM_REGISTRY_CA"},
    ),
    "tunnel_client": (
        "api/tunnel-client",
        {
            "cert": "IOTISTIC_PEM_TUNNEL_CERT",
            "key": "IOTISTIC_PEM_TUNNEL_KEY",
            "ca": "IOTISTIC_PEM_TUNNEL_CA",
        },
    ),
}
# Enrollment (stack config api.enrollment): the issuing CA's certificate, its chain and the root
# certificate are the API's own secret (public PEMs, but ECS injects only secrets and plain
# values, and these are not Pulumi's to know). The CA's key and the tls-crypt-v2 server key stay
# in the secrets PkiStore made for them (pki/ca-key, PEM; gateway/tls-crypt-v2-server, JSON
# {key}): one copy of each. The start script writes them all into ENROLL_PKI_DIR and
# ENROLL_TLS_CRYPT_KEY (keys 0600). The root key is never in AWS.
ENROLL_SECRETS = {
    "enroll_ca": (
        "api/enroll-ca",
        {
            "cert": "IOTISTIC_PEM_ENROLL_CA_CERT",
            "chain": "IOTISTIC_PEM_ENROLL_CA_CHAIN",
            "root": "IOTISTIC_PEM_ENROLL_ROOT_CERT",
        },
    ),
}
# Renewal through the tunnel (with enrollment): the API's own HTTPS listener, where a gateway's
# renewal client certificate is verified by the API itself (the ALB ends TLS, so none reaches the
# API through it). Its server certificate and key are issued on the control node for the
# listener's name (renewal_hostname) and `ca` is the fleet's CA chain: what the gateways'
# renewal client certificates chain to, and what they verify this listener's certificate with.
# roles/cloud_gateway publishes it; the start script writes the files IOTISTIC_API_TLS_* name.
RENEWAL_SECRETS = {
    "renewal_server": (
        "api/renewal-server",
        {
            "cert": "IOTISTIC_PEM_TLS_CERT",
            "key": "IOTISTIC_PEM_TLS_KEY",
            "ca": "IOTISTIC_PEM_TLS_CLIENT_CA",
        },
    ),
}
# JSON key -> variable in PkiStore's secrets; None: the whole secret (pki/ca-key is plain PEM).
ENROLL_CA_KEY = {None: "IOTISTIC_PEM_ENROLL_CA_KEY"}
ENROLL_TLS_CRYPT = {"key": "IOTISTIC_PEM_ENROLL_TLS_CRYPT_SERVER_KEY"}
# Where the container writes: the root file system is read-only. Task-scoped volumes.
PEM_DIR = "/run/iotistic-api"
ENROLL_PKI_DIR = f"{PEM_DIR}/enroll"  # ca.crt, ca.key, ca-chain.crt, root.crt (pki.CaFiles)
ENROLL_TLS_CRYPT_KEY = f"{PEM_DIR}/tls-crypt-v2-server.key"
STATE_DIR = "/var/lib/iotistic-vpn"  # conventions.STATE_DIR: the audit spool
METRICS_PORT = 9108  # python -m iotistic_vpn.api --metrics-port
START = "/usr/local/bin/iotistic-api-start"  # the image's entry point (images/api/)
VENV_PYTHON = "/opt/iotistic-vpn/api/bin/python"
# The container's own check, beside the load balancer's: /healthz answers 200 while the
# registry does.
HEALTH_CHECK = (
    "import sys, urllib.request; "
    f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{API_CONTAINER_PORT}/healthz', "
    "timeout=3).status != 200)"
)


@dataclass
class ApiEnrollmentArgs:
    """What enrollment takes from the other components: PkiStore's two keys, the gateways,
    and where the gateways renew their devices' certificates."""

    ca_key_secret_arn: pulumi.Input[str]
    tls_crypt_v2_secret_arn: pulumi.Input[str]
    # IOTISTIC_API_ENROLL_REMOTES: "host[:port[/udp|tcp]],...", the gateways' public name.
    remotes: str
    # The internal renewal load balancer's group (Firewall's renewal_lb: the gateways only) and
    # its name, which the listener's certificate carries.
    renewal_lb_security_group_id: pulumi.Input[str]
    renewal_hostname: str


@dataclass
class ApiServiceArgs:
    """Sizes from stack config; network, keys and database from the other components."""

    stack: str
    region: str
    name_prefix: str
    secret_prefix: str
    secret_recovery_days: int
    settings: ApiSettings
    vpc_id: pulumi.Input[str]
    public_subnet_ids: Sequence[pulumi.Input[str]]
    # Where the load balancers' nodes live (the public subnets): the only proxies trusted.
    public_subnet_cidrs: Sequence[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    lb_security_group_id: pulumi.Input[str]
    tunnel_lb_security_group_id: pulumi.Input[str]
    service_security_group_id: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    zone_id: str
    hostname: str
    tunnel_hostname: str
    database_address: pulumi.Input[str]
    # The name the gateways' shared certificate carries (roles/cloud_gateway issues it).
    gateway_tls_name: str = ""
    # None: enrollment off (stack config api.enrollment false), nothing of it declared.
    enrollment: ApiEnrollmentArgs | None = None


def _assume(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
            ],
        }
    )


class ApiService(pulumi.ComponentResource):
    """Certificates, ALB (HTTPS 443), tunnel NLB (TLS 3128), with enrollment the internal renewal
    NLB (TCP 9443), ECS cluster, task, service and its CPU scaling, DNS names."""

    def __init__(self, name: str, args: ApiServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("iotistic-vpn:index:ApiService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        api = args.settings
        role = "api"

        certificate_arn = _certificate(
            f"{name}-cert", args.stack, args.zone_id, args.hostname, child
        )

        self.load_balancer = aws.lb.LoadBalancer(
            f"{name}-alb",
            name=f"{args.name_prefix}-api",
            load_balancer_type="application",
            internal=False,
            subnets=list(args.public_subnet_ids),
            security_groups=[args.lb_security_group_id],
            drop_invalid_header_fields=True,
            tags=tags(args.stack, role, f"{args.name_prefix}-api"),
            opts=child,
        )
        target_group = aws.lb.TargetGroup(
            f"{name}-tasks",
            port=API_CONTAINER_PORT,
            protocol="HTTP",
            target_type="ip",
            vpc_id=args.vpc_id,
            health_check={"path": api.health_check_path, "matcher": "200", "interval": 15},
            tags=tags(args.stack, role),
            opts=child,
        )
        listener = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=self.load_balancer.arn,
            port=API_PUBLIC_PORT,
            protocol="HTTPS",
            ssl_policy=TLS_POLICY,
            certificate_arn=certificate_arn,
            default_actions=[{"type": "forward", "target_group_arn": target_group.arn}],
            tags=tags(args.stack, role),
            opts=child,
        )
        load_balancer_alias(f"{name}-dns", args.zone_id, args.hostname, self.load_balancer, child)

        # The HTTP CONNECT tunnel (SSH's ProxyCommand: `iotistic-vpn device tunnel --tls`) is
        # not HTTP to a load balancer: a network load balancer terminates TLS for it on its own
        # name and hands the plain stream to the tasks' CONNECT listener. TLS listeners close a
        # connection idle for 350 s (fixed by AWS): SSH's ServerAliveInterval keeps one open.
        tunnel_certificate_arn = _certificate(
            f"{name}-tunnel-cert", args.stack, args.zone_id, args.tunnel_hostname, child
        )
        self.tunnel_load_balancer, tunnel_targets, tunnel_listener = _stream_balancer(
            name,
            args,
            part="tunnel",
            short="tun",
            internal=False,
            subnets=args.public_subnet_ids,
            security_group_id=args.tunnel_lb_security_group_id,
            port=API_CONNECT_PORT,
            hostname=args.tunnel_hostname,
            certificate_arn=tunnel_certificate_arn,
            opts=child,
        )

        enroll = args.enrollment
        renewal_targets = renewal_listener = None
        if enroll:
            # Renewal through the tunnel: the gateways' client certificates must reach the API's
            # own TLS listener, so this balancer passes the TCP stream through (no certificate
            # of its own) and the API verifies them with the code the lab runs. Internal, in the
            # private subnets, its group admitting the gateways only; its name is in the public
            # zone but resolves to private addresses, and it is stable across replacements.
            self.renewal_load_balancer, renewal_targets, renewal_listener = _stream_balancer(
                name,
                args,
                part="renewal",
                short="renew",
                internal=True,
                subnets=args.private_subnet_ids,
                security_group_id=enroll.renewal_lb_security_group_id,
                port=API_TLS_PORT,
                hostname=enroll.renewal_hostname,
                certificate_arn=None,
                opts=child,
            )

        # The image: built from images/api/Containerfile by the pipeline and pushed here under
        # the commit's tag; tags never move, and old ones expire.
        self.repository = aws.ecr.Repository(
            f"{name}-image",
            name=f"{args.name_prefix}-api",
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "AES256"}],
            tags=tags(args.stack, role),
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-image-expiry",
            repository=self.repository.name,
            policy=json.dumps(
                {
                    "rules": [
                        {
                            "rulePriority": 1,
                            "description": "Keep the 30 newest images",
                            "selection": {
                                "tagStatus": "any",
                                "countType": "imageCountMoreThan",
                                "countNumber": 30,
                            },
                            "action": {"type": "expire"},
                        }
                    ]
                }
            ),
            opts=child,
        )

        own_secrets = API_SECRETS | (ENROLL_SECRETS | RENEWAL_SECRETS if enroll else {})
        self.secrets = {
            logical: aws.secretsmanager.Secret(
                f"{name}-{logical.replace('_', '-')}",
                name=f"{args.secret_prefix}/{path}",
                description=f"Cloud API: {path} (JSON with {', '.join(keys)})",
                kms_key_id=args.kms_key_arn,
                recovery_window_in_days=args.secret_recovery_days,
                tags=tags(args.stack, role),
                opts=child,
            )
            for logical, (path, keys) in own_secrets.items()
        }
        # Every injected variable's secret, (ARN, {JSON key or None: variable}): the API's own,
        # and with enrollment PkiStore's CA key and tls-crypt-v2 server key, by exact ARN.
        injected = [(self.secrets[k].arn, keys) for k, (_path, keys) in own_secrets.items()]
        if enroll:
            injected += [
                (enroll.ca_key_secret_arn, ENROLL_CA_KEY),
                (enroll.tls_crypt_v2_secret_arn, ENROLL_TLS_CRYPT),
            ]
        logs = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"/iotistic-vpn/{args.stack}/api",
            retention_in_days=api.log_retention_days,
            tags=tags(args.stack, role),
            opts=child,
        )

        # The execution role pulls the image, writes logs and injects exactly the secrets above
        # (never the gateways' certificate or registry login); the task itself runs with no AWS
        # permissions at all.
        execution_role = aws.iam.Role(
            f"{name}-execution",
            name_prefix=f"{args.name_prefix}-api-",
            assume_role_policy=_assume("ecs-tasks.amazonaws.com"),
            tags=tags(args.stack, role),
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-execution",
            role=execution_role.name,
            policy_arn="arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy",
            opts=child,
        )
        secret_arns = [arn for arn, _keys in injected]
        via = f"secretsmanager.{args.region}.amazonaws.com"
        aws.iam.RolePolicy(
            f"{name}-execution-secrets",
            role=execution_role.id,
            policy=pulumi.Output.all(args.kms_key_arn, *secret_arns).apply(
                lambda a: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "ReadApiSecrets",
                                "Effect": "Allow",
                                "Action": ["secretsmanager:GetSecretValue"],
                                "Resource": sorted(a[1:]),
                            },
                            {
                                "Sid": "DecryptThroughSecretsManager",
                                "Effect": "Allow",
                                "Action": ["kms:Decrypt"],
                                "Resource": [a[0]],
                                "Condition": {"StringEquals": {"kms:ViaService": via}},
                            },
                        ],
                    },
                    sort_keys=True,
                )
            ),
            opts=child,
        )

        container = pulumi.Output.all(logs.name, args.database_address, *secret_arns).apply(
            lambda a: _container_definitions(
                args, a[0], a[1], list(zip(a[2:], [keys for _arn, keys in injected], strict=True))
            )
        )
        self.task_definition = task = aws.ecs.TaskDefinition(
            f"{name}-task",
            family=f"{args.name_prefix}-api",
            cpu=str(api.cpu),
            memory=str(api.memory),
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            # Writable task storage under the read-only root: the PEM files and the audit spool.
            volumes=[{"name": "pem"}, {"name": "state"}],
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            execution_role_arn=execution_role.arn,
            container_definitions=container,
            tags=tags(args.stack, role),
            opts=child,
        )
        self.cluster = aws.ecs.Cluster(
            f"{name}-cluster",
            name=f"{args.name_prefix}-api",
            settings=[{"name": "containerInsights", "value": "enabled"}],
            tags=tags(args.stack, role),
            opts=child,
        )
        registrations = [
            {
                "target_group_arn": target_group.arn,
                "container_name": "api",
                "container_port": API_CONTAINER_PORT,
            },
            {
                "target_group_arn": tunnel_targets.arn,
                "container_name": "api",
                "container_port": API_CONNECT_PORT,
            },
        ]
        if renewal_targets is not None:
            registrations.append(
                {
                    "target_group_arn": renewal_targets.arn,
                    "container_name": "api",
                    "container_port": API_TLS_PORT,
                }
            )
        self.service = aws.ecs.Service(
            f"{name}-service",
            name="api",
            cluster=self.cluster.arn,
            task_definition=task.arn,
            desired_count=api.desired_count,
            launch_type="FARGATE",
            network_configuration={
                "subnets": list(args.private_subnet_ids),
                "security_groups": [args.service_security_group_id],
                "assign_public_ip": False,
            },
            load_balancers=registrations,
            deployment_circuit_breaker={"enable": True, "rollback": True},
            propagate_tags="SERVICE",
            enable_ecs_managed_tags=True,
            tags=tags(args.stack, role),
            # The scaling policy owns the task count once the service exists.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[listener, tunnel_listener]
                + ([renewal_listener] if renewal_listener else []),
                ignore_changes=["desiredCount"],
            ),
        )
        scaling_target = aws.appautoscaling.Target(
            f"{name}-scaling",
            service_namespace="ecs",
            scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", self.cluster.name, "/", self.service.name),
            min_capacity=api.desired_count,
            max_capacity=api.max_count,
            tags=tags(args.stack, role),
            opts=child,
        )
        aws.appautoscaling.Policy(
            f"{name}-cpu",
            policy_type="TargetTrackingScaling",
            service_namespace=scaling_target.service_namespace,
            scalable_dimension=scaling_target.scalable_dimension,
            resource_id=scaling_target.resource_id,
            target_tracking_scaling_policy_configuration={
                "predefined_metric_specification": {
                    "predefined_metric_type": "ECSServiceAverageCPUUtilization"
                },
                "target_value": api.target_cpu_percent,
            },
            opts=child,
        )

        self.url = f"https://{args.hostname}"
        # What `iotistic-vpn device tunnel --tls --proxy` and the registry inventory's
        # tunnel_proxy (with tunnel_tls) take.
        self.tunnel_proxy = f"{args.tunnel_hostname}:{API_CONNECT_PORT}"
        # What the gateways' agents call POST /v1/renewals at (gateway_agent_renewal_api_url);
        # empty with enrollment off: no renewal path, and the gateways open no endpoint.
        self.renewal_url = renewal_url(enroll.renewal_hostname) if enroll else ""
        self.register_outputs(
            {
                "url": self.url,
                "tunnel_proxy": self.tunnel_proxy,
                "renewal_url": self.renewal_url,
                "tunnel_lb_name": self.tunnel_load_balancer.name,
                "repository_url": self.repository.repository_url,
                "lb_name": self.load_balancer.name,
                "cluster_name": self.cluster.name,
                "service_name": self.service.name,
            }
        )


def _stream_balancer(
    name: str,
    args: ApiServiceArgs,
    *,
    part: str,
    short: str,
    internal: bool,
    subnets: Sequence[pulumi.Input[str]],
    security_group_id: pulumi.Input[str],
    port: int,
    hostname: str,
    certificate_arn: pulumi.Input[str] | None,
    opts: pulumi.ResourceOptions,
) -> tuple[aws.lb.LoadBalancer, aws.lb.TargetGroup, aws.lb.Listener]:
    """A network load balancer on its own name forwarding one port to the tasks' same port:
    TLS ended on it with certificate_arn, or (None) the TCP stream passed through."""
    role = "api"
    load_balancer = aws.lb.LoadBalancer(
        f"{name}-{part}-nlb",
        name=f"{args.name_prefix}-{short}",
        load_balancer_type="network",
        internal=internal,
        subnets=list(subnets),
        # Only at creation: a network load balancer made without a group never takes one.
        security_groups=[security_group_id],
        enable_cross_zone_load_balancing=True,
        tags=tags(args.stack, role, f"{args.name_prefix}-{short}"),
        opts=opts,
    )
    targets = aws.lb.TargetGroup(
        f"{name}-{part}-tasks",
        port=port,
        protocol="TCP",
        target_type="ip",
        vpc_id=args.vpc_id,
        # TCP: the tasks' listener accepts (a TLS check would need a client certificate the
        # balancer has no business holding). The same tasks' /healthz is the ALB's check.
        health_check={"protocol": "TCP", "interval": 15},
        tags=tags(args.stack, role),
        opts=opts,
    )
    tls = {"protocol": "TCP"}
    if certificate_arn is not None:
        tls = {"protocol": "TLS", "ssl_policy": TLS_POLICY, "certificate_arn": certificate_arn}
    listener = aws.lb.Listener(
        f"{name}-{part}",
        load_balancer_arn=load_balancer.arn,
        port=port,
        default_actions=[{"type": "forward", "target_group_arn": targets.arn}],
        tags=tags(args.stack, role),
        opts=opts,
        **tls,
    )
    load_balancer_alias(f"{name}-{part}-dns", args.zone_id, hostname, load_balancer, opts)
    return load_balancer, targets, listener


def renewal_url(hostname: str) -> str:
    """The URL of the API's own HTTPS listener behind the renewal load balancer."""
    return f"https://{hostname}:{API_TLS_PORT}"


def _certificate(
    name: str, stack: str, zone_id: str, hostname: str, opts: pulumi.ResourceOptions
) -> pulumi.Output[str]:
    """An ACM certificate for hostname, validated in DNS: its ARN once it is issued."""
    certificate = aws.acm.Certificate(
        name,
        domain_name=hostname,
        validation_method="DNS",
        tags=tags(stack, "api", hostname),
        opts=opts,
    )
    option = certificate.domain_validation_options.apply(lambda options: options[0])
    validation_record = aws.route53.Record(
        f"{name}-validation",
        zone_id=zone_id,
        name=option.apply(lambda o: o.resource_record_name),
        type=option.apply(lambda o: o.resource_record_type),
        records=[option.apply(lambda o: o.resource_record_value)],
        ttl=300,
        allow_overwrite=True,
        opts=opts,
    )
    return aws.acm.CertificateValidation(
        name,
        certificate_arn=certificate.arn,
        validation_record_fqdns=[validation_record.fqdn],
        opts=opts,
    ).certificate_arn


def _container_definitions(
    args: ApiServiceArgs,
    log_group: str,
    database_address: str,
    injected: Sequence[tuple[str, Mapping[str | None, str]]],
) -> str:
    """The API container: settings in the environment, credentials injected from secrets."""
    secrets = [
        {"name": var, "valueFrom": arn if key is None else f"{arn}:{key}::"}
        for arn, keys in injected
        for key, var in keys.items()
    ]
    environment = {
        # libpq's own variables: the registry DSN (a secret) holds only the login.
        "PGHOST": database_address,
        "PGPORT": str(POSTGRES_PORT),
        "PGDATABASE": DATABASE_NAME,
        # RDS's certificate is verified, host name included, against the RDS CA bundle (the
        # secret's `ca`, written to this file by the image's start script): never plaintext.
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": f"{PEM_DIR}/registry-ca.pem",
        "IOTISTIC_API_TUNNEL_CERT": f"{PEM_DIR}/tunnel.crt",
        "IOTISTIC_API_TUNNEL_KEY": f"{PEM_DIR}/tunnel.key",
        "IOTISTIC_API_TUNNEL_CA": f"{PEM_DIR}/ca.pem",
        # Gateways are named by their private address (inventory/production's hostnames).
        "IOTISTIC_API_GATEWAY_ADDRESS": "{gateway}",
        # ...and all serve the fleet's one certificate, issued for the VPN's host name.
        "IOTISTIC_API_GATEWAY_TLS_NAME": args.gateway_tls_name,
        "IOTISTIC_API_TUNNEL_PORT": str(TUNNEL_SERVICE_PORT),
        "IOTISTIC_API_AUDIT_SPOOL": f"{STATE_DIR}/api-audit.db",
        # uvicorn's own (the API runs it with proxy_headers): X-Forwarded-For is believed only
        # from the ALB's nodes, and only the address the ALB appended, so the enrollment's
        # per-source limit and the audit log see the client, not the ALB (whose few addresses
        # would otherwise share one source's enrollment budget).
        "FORWARDED_ALLOW_IPS": ",".join(args.public_subnet_cidrs),
        # The HTTP CONNECT tunnel, behind the tunnel NLB's TLS listener.
        "IOTISTIC_API_CONNECT_PROXY_LISTEN": f"0.0.0.0:{API_CONNECT_PORT}",
    }
    if args.enrollment:
        # The files the start script writes from the IOTISTIC_PEM_ENROLL_* secrets. No
        # passphrase: it would sit beside the key, under the same KMS key and grant.
        environment |= {
            "IOTISTIC_API_ENROLL_PKI_DIR": ENROLL_PKI_DIR,
            "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": ENROLL_TLS_CRYPT_KEY,
            "IOTISTIC_API_ENROLL_REMOTES": args.enrollment.remotes,
            # The gateways' renewals (the renewal NLB's target): the API's own HTTPS listener,
            # which asks for a client certificate and verifies it against the fleet's CA chain.
            # The files are the start script's, from the IOTISTIC_PEM_TLS_* secrets.
            "IOTISTIC_API_TLS_LISTEN": f"0.0.0.0:{API_TLS_PORT}",
            "IOTISTIC_API_TLS_CERT": f"{PEM_DIR}/tls.crt",
            "IOTISTIC_API_TLS_KEY": f"{PEM_DIR}/tls.key",
            "IOTISTIC_API_TLS_CLIENT_CA": f"{PEM_DIR}/tls-client-ca.pem",
        }
    ports = [
        {"containerPort": API_CONTAINER_PORT, "protocol": "tcp", "name": "http"},
        {"containerPort": METRICS_PORT, "protocol": "tcp", "name": "metrics"},
        {"containerPort": API_CONNECT_PORT, "protocol": "tcp", "name": "connect"},
    ]
    if args.enrollment:
        ports.append({"containerPort": API_TLS_PORT, "protocol": "tcp", "name": "https"})
    return json.dumps(
        [
            {
                "name": "api",
                "image": args.settings.image,
                "essential": True,
                "readonlyRootFilesystem": True,
                "command": [
                    START,
                    "--port",
                    str(API_CONTAINER_PORT),
                    "--metrics-port",
                    str(METRICS_PORT),
                ],
                "portMappings": ports,
                "mountPoints": [
                    {"sourceVolume": "pem", "containerPath": PEM_DIR, "readOnly": False},
                    {"sourceVolume": "state", "containerPath": STATE_DIR, "readOnly": False},
                ],
                "healthCheck": {
                    "command": ["CMD", VENV_PYTHON, "-c", HEALTH_CHECK],
                    "interval": 15,
                    "timeout": 5,
                    "retries": 3,
                    "startPeriod": 20,
                },
                "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
                "secrets": secrets,
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": log_group,
                        "awslogs-region": args.region,
                        "awslogs-stream-prefix": "api",
                    },
                },
            }
        ],
        sort_keys=True,
    )

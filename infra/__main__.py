"""Iotistic VPN in AWS: read and check the stack config, then compose the components.

Order matters only where one component needs another's outputs:
network -> firewall -> PKI store -> registry database -> gateway fleet -> cloud API.
The stack outputs feed inventory/production/group_vars (see docs/cloud.md).
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import stackconfig
from components.api_service import ApiEnrollmentArgs, ApiService, ApiServiceArgs, renewal_url
from components.firewall import Firewall, FirewallArgs
from components.gateway_fleet import GatewayFleet, GatewayFleetArgs
from components.network import Network, NetworkArgs
from components.pki_store import CRL_OBJECT_KEY, PkiStore, PkiStoreArgs
from components.registry_database import RegistryDatabase, RegistryDatabaseArgs
from conventions import DATABASE_NAME, DEBIAN_LOGIN_USER, METRIC_NAMESPACE, OPENVPN_PORT

from iotistic_vpn.errors import InvalidValue


def _settings() -> tuple[stackconfig.StackSettings, tuple[str, ...], str]:
    """Validate config and look up zones and the DNS zone, before any resource exists."""
    config = pulumi.Config()
    raw = {key: config.get_object(key) for key in stackconfig.SECTIONS}
    raw = {key: value for key, value in raw.items() if value is not None}
    stack = pulumi.get_stack()
    try:
        settings = stackconfig.load(raw, stack=stack, region=aws.config.region or "")
        # Standard zones only: Local and Wavelength Zones lack RDS and NLB support.
        available = aws.get_availability_zones(
            state="available",
            filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
        ).names
        zones = stackconfig.check_zones(settings, available)
    except InvalidValue as exc:
        # RunError prints the message alone: the bad key and value, no traceback.
        raise pulumi.RunError(f"stack {stack}: {exc}") from None
    zone_id = aws.route53.get_zone(name=settings.dns.zone, private_zone=False).zone_id
    return settings, zones, zone_id


def main() -> None:
    """Declare the stack."""
    settings, zones, zone_id = _settings()
    s = settings

    network = Network(
        "network",
        NetworkArgs(
            stack=s.stack,
            region=s.region,
            cidr=str(s.network.cidr),
            zones=zones,
            public_subnets=s.network.public_subnets,
            private_subnets=s.network.private_subnets,
            nat_gateways=s.network.nat_gateways,
        ),
    )
    firewall = Firewall(
        "firewall",
        FirewallArgs(
            stack=s.stack,
            vpc_id=network.vpc_id,
            public_subnet_cidrs=s.network.public_subnets,
            endpoint_subnet_id=network.private_subnet_ids[0],
        ),
    )
    pki = PkiStore(
        "pki",
        PkiStoreArgs(
            stack=s.stack,
            region=s.region,
            name_prefix=s.name_prefix,
            secret_prefix=s.secret_prefix,
            secret_recovery_days=s.pki.secret_recovery_days,
            kms_deletion_days=s.pki.kms_deletion_days,
            crl_noncurrent_days=s.pki.crl_noncurrent_days,
            production=s.production,
        ),
    )
    database = RegistryDatabase(
        "registry",
        RegistryDatabaseArgs(
            stack=s.stack,
            name_prefix=s.name_prefix,
            production=s.production,
            kms_deletion_days=s.pki.kms_deletion_days,
            settings=s.database,
            subnet_ids=network.private_subnet_ids,
            security_group_id=firewall.groups["database"].id,
        ),
    )
    gateway_secret_names = {k: secret.name for k, secret in pki.gateway_secrets.items()}
    # The same iotistic_vpn_cloud_* variables reach the gateway playbook two ways: written to
    # each gateway at boot (ansible-pull) and from the stack outputs (CI's ansible-playbook).
    cloud_vars = {
        "iotistic_vpn_cloud_stack": s.stack,
        "iotistic_vpn_cloud_region": s.region,
        "iotistic_vpn_cloud_vpn_hostname": s.dns.vpn_hostname,
        "iotistic_vpn_cloud_crl_bucket": pki.bucket_name,
        "iotistic_vpn_cloud_crl_object_key": CRL_OBJECT_KEY,
        "iotistic_vpn_cloud_gateway_secrets": pulumi.Output.all(**gateway_secret_names),
        "iotistic_vpn_cloud_database_host": database.address,
        "iotistic_vpn_cloud_database_port": database.port,
        "iotistic_vpn_cloud_database_name": DATABASE_NAME,
        "iotistic_vpn_cloud_metric_namespace": METRIC_NAMESPACE,
        # Where the gateways' agents renew their devices' certificates (the API's own HTTPS
        # listener, behind the internal renewal NLB); empty with enrollment off.
        "iotistic_vpn_cloud_api_renewal_url": (
            renewal_url(s.dns.renewal_hostname) if s.api.enrollment else ""
        ),
    }
    fleet = GatewayFleet(
        "gateways",
        GatewayFleetArgs(
            stack=s.stack,
            name_prefix=s.name_prefix,
            settings=s.gateways,
            vpc_id=network.vpc_id,
            public_subnet_ids=network.public_subnet_ids,
            private_subnet_ids=network.private_subnet_ids,
            security_group_id=firewall.groups["gateway"].id,
            instance_profile_arn=pki.gateway_profile.arn,
            zone_id=zone_id,
            vpn_hostname=s.dns.vpn_hostname,
            cloud_vars=cloud_vars,
        ),
    )
    # Enrolled devices are sent to the gateways' public name (vpn.<zone>, the NLB's alias, the
    # name the fleet's certificate carries), the OpenVPN port, UDP.
    enrollment = (
        ApiEnrollmentArgs(
            ca_key_secret_arn=pki.ca_key.arn,
            tls_crypt_v2_secret_arn=pki.gateway_secrets["tls_crypt_v2"].arn,
            remotes=f"{s.dns.vpn_hostname}:{OPENVPN_PORT}/udp",
            renewal_lb_security_group_id=firewall.groups["renewal_lb"].id,
            renewal_hostname=s.dns.renewal_hostname,
        )
        if s.api.enrollment
        else None
    )
    api = ApiService(
        "api",
        ApiServiceArgs(
            stack=s.stack,
            region=s.region,
            name_prefix=s.name_prefix,
            secret_prefix=s.secret_prefix,
            secret_recovery_days=s.pki.secret_recovery_days,
            settings=s.api,
            vpc_id=network.vpc_id,
            public_subnet_ids=network.public_subnet_ids,
            public_subnet_cidrs=s.network.public_subnets,
            private_subnet_ids=network.private_subnet_ids,
            lb_security_group_id=firewall.groups["api_lb"].id,
            tunnel_lb_security_group_id=firewall.groups["tunnel_lb"].id,
            service_security_group_id=firewall.groups["api"].id,
            kms_key_arn=pki.key.arn,
            zone_id=zone_id,
            hostname=s.dns.api_hostname,
            tunnel_hostname=s.dns.tunnel_hostname,
            database_address=database.address,
            gateway_tls_name=s.dns.vpn_hostname,
            enrollment=enrollment,
        ),
    )

    pulumi.export("stack", s.stack)
    pulumi.export("region", s.region)
    pulumi.export("zones", list(zones))
    pulumi.export("vpc_id", network.vpc_id)
    pulumi.export("vpn_hostname", s.dns.vpn_hostname)
    pulumi.export("gateway_nlb_name", fleet.load_balancer.name)
    pulumi.export("gateway_nlb_dns_name", fleet.load_balancer.dns_name)
    pulumi.export("gateway_asg_name", fleet.group.name)
    pulumi.export("gateway_ssh_user", DEBIAN_LOGIN_USER)
    pulumi.export("ssh_endpoint_id", firewall.endpoint.id)
    pulumi.export("database_address", database.address)
    pulumi.export("database_port", database.port)
    pulumi.export("database_name", DATABASE_NAME)
    pulumi.export("database_master_secret_arn", database.master_secret_arn)
    pulumi.export("crl_bucket", pki.bucket_name)
    pulumi.export("crl_object_key", CRL_OBJECT_KEY)
    pulumi.export("pki_kms_key_arn", pki.key.arn)
    pulumi.export("ca_key_secret_name", pki.ca_key.name)
    pulumi.export("gateway_secret_names", gateway_secret_names)
    pulumi.export("api_secret_names", {k: secret.name for k, secret in api.secrets.items()})
    pulumi.export("api_url", api.url)
    pulumi.export("api_tunnel_proxy", api.tunnel_proxy)
    pulumi.export("api_tunnel_lb_name", api.tunnel_load_balancer.name)
    # What roles/cloud_gateway publishes the listener's certificate for, and the gateways call
    # (iotistic_vpn_cloud_api_renewal_url); empty with enrollment off.
    pulumi.export("api_renewal_url", api.renewal_url)
    if s.api.enrollment:
        pulumi.export("api_renewal_lb_name", api.renewal_load_balancer.name)
    # Where the pipeline pushes the API image (images/api/Containerfile) before `pulumi up`.
    pulumi.export("api_image_repository", api.repository.repository_url)
    pulumi.export("api_lb_name", api.load_balancer.name)
    pulumi.export("api_cluster_name", api.cluster.name)
    pulumi.export("api_service_name", api.service.name)
    # The revision this `pulumi up` gave the service: the pipeline's health wait fails when the
    # circuit breaker rolled the service back to an older one (playbooks/cloud_health.yml).
    pulumi.export("api_task_definition_arn", api.task_definition.arn)
    pulumi.export("metric_namespace", METRIC_NAMESPACE)


main()

"""RegistryDatabase: RDS PostgreSQL for the device registry, private, encrypted, TLS only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from conventions import DATABASE_NAME, POSTGRES_PORT, tags
from stackconfig import DatabaseSettings

MASTER_USERNAME = "iotistic_admin"


@dataclass
class RegistryDatabaseArgs:
    """Sizes from stack config, placement from the Network and Firewall components."""

    stack: str
    name_prefix: str
    production: bool
    kms_deletion_days: int
    settings: DatabaseSettings
    subnet_ids: Sequence[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]


class RegistryDatabase(pulumi.ComponentResource):
    """KMS key, subnet group, parameter group forcing TLS, and the PostgreSQL instance."""

    def __init__(
        self, name: str, args: RegistryDatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("iotistic-vpn:index:RegistryDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = "registry"
        db = args.settings

        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"{args.name_prefix}: registry storage and master password",
            enable_key_rotation=True,
            deletion_window_in_days=args.kms_deletion_days,
            tags=tags(args.stack, role),
            opts=child,
        )
        subnets = aws.rds.SubnetGroup(
            f"{name}-subnets",
            subnet_ids=list(args.subnet_ids),
            description="Private subnets only",
            tags=tags(args.stack, role),
            opts=child,
        )
        parameters = aws.rds.ParameterGroup(
            f"{name}-params",
            family=db.parameter_family,
            description="Registry: TLS required for every client",
            parameters=[{"name": "rds.force_ssl", "value": "1"}],
            tags=tags(args.stack, role),
            opts=child,
        )
        self.instance = aws.rds.Instance(
            f"{name}-postgres",
            identifier=f"{args.name_prefix}-registry",
            engine="postgres",
            engine_version=db.engine_version,
            instance_class=db.instance_class,
            allocated_storage=db.allocated_storage_gb,
            max_allocated_storage=db.max_allocated_storage_gb,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=self.key.arn,
            db_name=DATABASE_NAME,
            port=POSTGRES_PORT,
            username=MASTER_USERNAME,
            # RDS generates and rotates the master password in Secrets Manager: no password in
            # config or in Pulumi state.
            manage_master_user_password=True,
            master_user_secret_kms_key_id=self.key.arn,
            multi_az=db.multi_az,
            publicly_accessible=False,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[args.security_group_id],
            parameter_group_name=parameters.name,
            backup_retention_period=db.backup_retention_days,
            deletion_protection=db.deletion_protection,
            skip_final_snapshot=not args.production,
            final_snapshot_identifier=f"{args.name_prefix}-registry-final",
            copy_tags_to_snapshot=True,
            auto_minor_version_upgrade=True,
            apply_immediately=not args.production,
            enabled_cloudwatch_logs_exports=["postgresql"],
            tags=tags(args.stack, role, f"{args.name_prefix}-registry"),
            opts=child,
        )
        self.address = self.instance.address
        self.port = self.instance.port
        self.master_secret_arn = self.instance.master_user_secrets.apply(
            lambda secrets: secrets[0].secret_arn
        )
        self.register_outputs(
            {
                "address": self.address,
                "port": self.port,
                "master_secret_arn": self.master_secret_arn,
            }
        )

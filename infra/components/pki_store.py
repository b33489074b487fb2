"""PkiStore: the CA key and gateway secrets under a KMS key, the CRL bucket, the gateway role.

Pulumi makes the containers; their values are written by the PKI playbooks from the control
node (the CA key never passes through Pulumi state). The gateway role may read the CRL, its
own secrets and publish its device count, nothing else: not the CA key, not another secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from conventions import GATEWAY_SECRET_KEYS, METRIC_NAMESPACE, tags

CRL_PREFIX = "crl/"
CRL_OBJECT_KEY = "crl/crl.pem"
# Logical key -> secret path under iotistic-vpn/<stack>/; the gateway role reads these only.
# Their JSON keys are GATEWAY_SECRET_KEYS (iotistic_vpn.conventions), named in each description.
GATEWAY_SECRETS = {
    "server_cert": "gateway/server-cert",
    "tls_crypt_v2": "gateway/tls-crypt-v2-server",
    "registry": "gateway/registry",
}


@dataclass
class PkiStoreArgs:
    """Retention and naming of the PKI material."""

    stack: str
    region: str
    name_prefix: str
    secret_prefix: str
    secret_recovery_days: int
    kms_deletion_days: int
    crl_noncurrent_days: int
    production: bool


def _policy(statements: list[dict]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


class PkiStore(pulumi.ComponentResource):
    """KMS key, CA key secret, gateway secrets, versioned private CRL bucket, gateway IAM role."""

    def __init__(self, name: str, args: PkiStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("iotistic-vpn:index:PkiStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = "pki"

        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"{args.name_prefix}: CA key, gateway secrets and CRL",
            enable_key_rotation=True,
            deletion_window_in_days=args.kms_deletion_days,
            tags=tags(args.stack, role),
            opts=child,
        )
        aws.kms.Alias(
            f"{name}-key",
            name=f"alias/{args.name_prefix}-pki",
            target_key_id=self.key.id,
            opts=child,
        )

        def secret(
            logical: str, path: str, what: str, secret_role: str
        ) -> aws.secretsmanager.Secret:
            return aws.secretsmanager.Secret(
                f"{name}-{logical.replace('_', '-')}",
                name=f"{args.secret_prefix}/{path}",
                description=what,
                kms_key_id=self.key.arn,
                recovery_window_in_days=args.secret_recovery_days,
                tags=tags(args.stack, secret_role),
                opts=child,
            )

        self.ca_key = secret("ca_key", "pki/ca-key", "Issuing CA private key (PEM)", role)
        self.gateway_secrets = {
            logical: secret(
                logical,
                path,
                f"Gateway fleet: {path}, JSON {{{', '.join(GATEWAY_SECRET_KEYS[logical])}}}",
                "gateway",
            )
            for logical, path in GATEWAY_SECRETS.items()
        }

        self.bucket = aws.s3.Bucket(
            f"{name}-crl",
            bucket_prefix=f"{args.name_prefix}-crl-",
            # Development stacks may be torn down with their CRL history; production may not.
            force_destroy=not args.production,
            tags=tags(args.stack, role, f"{args.name_prefix}-crl"),
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-crl",
            bucket=self.bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child,
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-crl",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketVersioning(
            f"{name}-crl",
            bucket=self.bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-crl",
            bucket=self.bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": self.key.arn,
                    },
                    "bucket_key_enabled": True,
                }
            ],
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-crl",
            bucket=self.bucket.id,
            rules=[
                {
                    "id": "expire-old-crls",
                    "status": "Enabled",
                    "filter": {"prefix": CRL_PREFIX},
                    "noncurrent_version_expiration": {"noncurrent_days": args.crl_noncurrent_days},
                }
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-crl",
            bucket=self.bucket.id,
            policy=self.bucket.arn.apply(
                lambda arn: _policy(
                    [
                        {
                            "Sid": "DenyInsecureTransport",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [arn, f"{arn}/*"],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ]
                )
            ),
            opts=child,
        )

        self.gateway_role = aws.iam.Role(
            f"{name}-gateway",
            name_prefix=f"{args.name_prefix}-gw-",
            description="VPN gateways: read the CRL and the gateway secrets, publish device count",
            assume_role_policy=_policy(
                [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ]
            ),
            tags=tags(args.stack, "gateway"),
            opts=child,
        )
        secret_arns = [s.arn for s in self.gateway_secrets.values()]
        aws.iam.RolePolicy(
            f"{name}-gateway",
            role=self.gateway_role.id,
            policy=pulumi.Output.all(self.bucket.arn, self.key.arn, *secret_arns).apply(
                lambda a: _gateway_policy(args.region, a[0], a[1], a[2:])
            ),
            opts=child,
        )
        self.gateway_profile = aws.iam.InstanceProfile(
            f"{name}-gateway",
            name_prefix=f"{args.name_prefix}-gw-",
            role=self.gateway_role.name,
            tags=tags(args.stack, "gateway"),
            opts=child,
        )

        self.bucket_name = self.bucket.bucket
        self.register_outputs(
            {
                "crl_bucket": self.bucket_name,
                "ca_key_secret_name": self.ca_key.name,
                "kms_key_arn": self.key.arn,
                "gateway_role_arn": self.gateway_role.arn,
            }
        )


def _gateway_policy(region: str, bucket_arn: str, key_arn: str, secret_arns: list[str]) -> str:
    """Least privilege for a gateway: each statement names exact resources."""
    return _policy(
        [
            {
                "Sid": "ReadCrl",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{bucket_arn}/{CRL_PREFIX}*"],
            },
            {
                # What roles/cloud_gateway's pull calls: the secretsmanager_secret lookup's
                # GetSecretValue, and s3_object's GetObject (HeadObject) with its bucket
                # lookups skipped. Nothing to list, describe or write.
                "Sid": "ReadGatewaySecrets",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": sorted(secret_arns),
            },
            {
                "Sid": "DecryptThroughSecretsManagerAndS3",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": [key_arn],
                "Condition": {
                    "StringEquals": {
                        "kms:ViaService": [
                            f"secretsmanager.{region}.amazonaws.com",
                            f"s3.{region}.amazonaws.com",
                        ]
                    }
                },
            },
            {
                # PutMetricData has no resource ARNs; the namespace condition is the fence.
                "Sid": "PublishConnectedDevices",
                "Effect": "Allow",
                "Action": ["cloudwatch:PutMetricData"],
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": METRIC_NAMESPACE}},
            },
        ]
    )

"""Storage: private, versioned, SSE-KMS, TLS-only S3 buckets for artifacts, lake, registry, logs."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from infra.config import DataConfig

# Purpose of each bucket -> logical name suffix. Outputs and IRSA policies key on these.
# flow-results: the flows' persisted task results (flows/resume.py), read back by a retried run.
BUCKET_PURPOSES = (
    "mlflow-artifacts",
    "feature-lake",
    "feast-registry",
    "prediction-log",
    "flow-results",
)


def tls_only_policy(bucket_arn: str) -> str:
    """Bucket policy that refuses any request not made over TLS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


class SecureBucket(pulumi.ComponentResource):
    """One S3 bucket with every guard rail the policy pack checks."""

    def __init__(
        self,
        name: str,
        *,
        kms_key_arn: pulumi.Input[str],
        noncurrent_version_days: int,
        expiration_days: int | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:SecureBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = aws.s3.Bucket(name, force_destroy=False, opts=child)
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=self.bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},  # ACLs off
            opts=child,
        )
        access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=self.bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-sse",
            bucket=self.bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": kms_key_arn,
                    },
                    "bucket_key_enabled": True,  # fewer KMS calls, lower cost
                }
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=self.bucket.id,
            policy=self.bucket.arn.apply(tls_only_policy),
            # S3 rejects bucket policies while the public-access block is still being applied.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[access_block]),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=self.bucket.id,
            rules=[_lifecycle_rule(noncurrent_version_days, expiration_days)],
            opts=child,
        )
        self.name = self.bucket.bucket
        self.arn = self.bucket.arn
        self.register_outputs({"bucket": self.name, "arn": self.arn})


def _lifecycle_rule(noncurrent_days: int, expiration_days: int | None) -> dict:
    """Expire old versions and failed uploads; optionally current objects too."""
    rule: dict = {
        "id": "expire-old-versions",
        "status": "Enabled",
        "filter": {"prefix": ""},
        "noncurrent_version_expiration": {"noncurrent_days": noncurrent_days},
        "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
    }
    if expiration_days is not None:
        rule["expiration"] = {"days": expiration_days}
    return rule


def _expiration_days(purpose: str, cfg: DataConfig) -> int | None:
    """Days a bucket's objects live: the prediction log's and the flow results' own; else kept."""
    return {
        "prediction-log": cfg.prediction_log_days,
        "flow-results": cfg.flow_results_days,
    }.get(purpose)


class Storage(pulumi.ComponentResource):
    """The platform's five buckets, encrypted with one rotating KMS key."""

    def __init__(
        self, name: str, cfg: DataConfig, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlre:infra:Storage", name, None, opts)
        self.kms_key = aws.kms.Key(
            f"{name}-data-key",
            description=f"SSE-KMS for {name} buckets",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.buckets: dict[str, SecureBucket] = {
            purpose: SecureBucket(
                f"{name}-{purpose}",
                kms_key_arn=self.kms_key.arn,
                noncurrent_version_days=cfg.noncurrent_version_days,
                expiration_days=_expiration_days(purpose, cfg),
                opts=pulumi.ResourceOptions(parent=self),
            )
            for purpose in BUCKET_PURPOSES
        }
        self.register_outputs({purpose: bucket.name for purpose, bucket in self.buckets.items()})

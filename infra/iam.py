"""IAM documents as pure functions plus the IRSA role helper (least privilege, no wildcards)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from infra.policy.iam_allowlist import UNSCOPABLE_READ_ACTIONS


def statement(actions: Sequence[str], resources: Sequence[str]) -> dict:
    """One Allow statement with explicit actions and resources."""
    return {"Effect": "Allow", "Action": sorted(actions), "Resource": list(resources)}


def document(statements: Sequence[dict]) -> str:
    """Serialise statements into an IAM policy document."""
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def s3_access_statements(
    bucket_arns: Sequence[str], kms_key_arn: str, *, write: bool
) -> list[dict]:
    """List the named buckets, read (and optionally write) their objects, use their KMS key."""
    object_actions = ["s3:GetObject", "s3:GetObjectVersion"]
    if write:
        object_actions += ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    kms_actions = ["kms:Decrypt", "kms:DescribeKey"]
    if write:
        kms_actions.append("kms:GenerateDataKey")
    return [
        statement(["s3:ListBucket", "s3:GetBucketLocation"], bucket_arns),
        statement(object_actions, [f"{arn}/*" for arn in bucket_arns]),
        statement(kms_actions, [kms_key_arn]),
    ]


def flows_policy(data_bucket_arns: Sequence[str], kms_key_arn: str) -> str:
    """What the flows' pods may do: read and write the data buckets (lake, prediction log)."""
    return document(s3_access_statements(data_bucket_arns, kms_key_arn, write=True))


def cluster_autoscaler_statements(
    asg_arns: Sequence[str], node_group_arns: Sequence[str]
) -> list[dict]:
    """cluster-autoscaler: describe everywhere (unscopable), resize only our node groups' ASGs."""
    return [
        {
            "Effect": "Allow",
            "Action": sorted(UNSCOPABLE_READ_ACTIONS),
            "Resource": "*",
        },
        statement(
            ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
            asg_arns,
        ),
        statement(["eks:DescribeNodegroup"], node_group_arns),
    ]


def irsa_trust_policy(provider_arn: str, issuer_url: str, namespace: str, sa: str) -> str:
    """Trust policy letting exactly one Kubernetes service account assume the role."""
    issuer = issuer_url.removeprefix("https://")
    return document(
        [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer}:sub": f"system:serviceaccount:{namespace}:{sa}",
                        f"{issuer}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ]
    )


def service_trust_policy(service: str) -> str:
    """Trust policy for an AWS service principal (EKS control plane, EC2 nodes)."""
    principal = {"Service": service}
    return document([{"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}])


def irsa_role(
    name: str,
    *,
    oidc_provider_arn: pulumi.Input[str],
    oidc_issuer_url: pulumi.Input[str],
    namespace: str,
    service_account: str,
    policy: pulumi.Input[str],
    parent: pulumi.Resource,
) -> aws.iam.Role:
    """IAM role for one service account (IRSA) with one inline least-privilege policy."""
    trust = pulumi.Output.all(oidc_provider_arn, oidc_issuer_url).apply(
        lambda a: irsa_trust_policy(a[0], a[1], namespace, service_account)
    )
    role = aws.iam.Role(
        f"{name}-role", assume_role_policy=trust, opts=pulumi.ResourceOptions(parent=parent)
    )
    aws.iam.RolePolicy(
        f"{name}-policy", role=role.id, policy=policy, opts=pulumi.ResourceOptions(parent=role)
    )
    return role

"""Every CrossGuard rule passes on what our stacks create and fails on a bad fixture."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.policy import rules
from tests.infra.infra_harness import Run, violations

pytestmark = pytest.mark.infra

POLICY_BY_NAME = {p.name: p for p in rules.POLICIES}

EKS = "aws:eks/cluster:Cluster"
GOOD_EKS = {
    "enabledClusterLogTypes": ["api", "audit", "authenticator", "controllerManager", "scheduler"],
    "encryptionConfig": {"resources": ["secrets"], "provider": {"keyArn": "arn:aws:kms:k"}},
    "vpcConfig": {"endpointPrivateAccess": True, "endpointPublicAccess": False},
}
LT = "aws:ec2/launchTemplate:LaunchTemplate"
NG = "aws:eks/nodeGroup:NodeGroup"
GPU_NG = {
    "amiType": "AL2023_x86_64_NVIDIA",
    "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}],
    "scalingConfig": {"minSize": 0, "maxSize": 2, "desiredSize": 0},
}
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
HELM = "kubernetes:helm.sh/v3:Release"


def _iam(*statements: dict) -> dict:
    return {"policy": json.dumps({"Version": "2012-10-17", "Statement": list(statements)})}


# (policy name, resource type, bad props) — each must be reported.
BAD_FIXTURES: list[tuple[str, str, dict[str, Any]]] = [
    ("eks-control-plane-logging", EKS, {**GOOD_EKS, "enabledClusterLogTypes": ["api"]}),
    ("eks-secrets-encryption", EKS, {**GOOD_EKS, "encryptionConfig": None}),
    ("eks-endpoint-not-open", EKS, {**GOOD_EKS, "vpcConfig": {"endpointPrivateAccess": True}}),
    (
        "eks-endpoint-not-open",
        EKS,
        {
            **GOOD_EKS,
            "vpcConfig": {
                "endpointPrivateAccess": True,
                "endpointPublicAccess": True,
                "publicAccessCidrs": ["0.0.0.0/0"],
            },
        },
    ),
    ("launch-template-imdsv2", LT, {"metadataOptions": {"httpTokens": "optional"}}),
    (
        "launch-template-imdsv2",
        LT,
        {"metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2}},
    ),
    (
        "launch-template-ebs-encrypted",
        LT,
        {"blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": 50}}]},
    ),
    ("gpu-node-group-guarded", NG, {**GPU_NG, "taints": []}),
    ("gpu-node-group-guarded", NG, {**GPU_NG, "scalingConfig": {"minSize": 1, "maxSize": 2}}),
    (
        "gpu-node-group-guarded",
        NG,
        {"labels": {"mlre.io/pool": "gpu"}, "scalingConfig": {"minSize": 0}},
    ),
    (
        "s3-sse-kms",
        rules.S3_SSE_TYPE,
        {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]},
    ),
    (
        "s3-versioning",
        "aws:s3/bucketVersioning:BucketVersioning",
        {"versioningConfiguration": {"status": "Suspended"}},
    ),
    (
        "s3-public-access-block",
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        {"blockPublicAcls": True, "blockPublicPolicy": True, "ignorePublicAcls": True},
    ),
    (
        "s3-ownership-enforced",
        "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
        {"rule": {"objectOwnership": "ObjectWriter"}},
    ),
    ("s3-no-public-acl", "aws:s3/bucket:Bucket", {"acl": "public-read"}),
    (
        "rds-hardened",
        "aws:rds/instance:Instance",
        {"storageEncrypted": False, "publiclyAccessible": False, "backupRetentionPeriod": 7},
    ),
    (
        "rds-hardened",
        "aws:rds/instance:Instance",
        {"storageEncrypted": True, "publiclyAccessible": True, "backupRetentionPeriod": 7},
    ),
    (
        "rds-hardened",
        "aws:rds/instance:Instance",
        {"storageEncrypted": True, "publiclyAccessible": False, "backupRetentionPeriod": 0},
    ),
    (
        "elasticache-hardened",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        {"atRestEncryptionEnabled": True, "transitEncryptionEnabled": False, "authToken": "t"},
    ),
    (
        "elasticache-hardened",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        {"atRestEncryptionEnabled": True, "transitEncryptionEnabled": True},
    ),
    (
        "iam-no-wildcards",
        ROLE_POLICY,
        _iam({"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::b"]}),
    ),
    (
        "iam-no-wildcards",
        ROLE_POLICY,
        _iam({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}),
    ),
    (
        "iam-no-wildcards",
        "aws:iam/policy:Policy",
        _iam({"Effect": "Allow", "Action": "*", "Resource": "*"}),
    ),
    (
        "iam-no-wildcards",
        ROLE_POLICY,
        _iam({"Effect": "Allow", "NotAction": "iam:*", "Resource": ["arn:aws:s3:::b"]}),
    ),
    (
        "iam-no-wildcards",
        ROLE_POLICY,
        _iam(
            {
                "Effect": "Allow",
                "Action": "dynamodb:GetItem",
                "Resource": "arn:aws:dynamodb:us-east-1:1:*",
            }
        ),
    ),
    ("helm-chart-pinned", HELM, {"chart": "kube-prometheus-stack"}),
    ("helm-chart-pinned", HELM, {"chart": "kube-prometheus-stack", "version": "75.x"}),
    ("helm-chart-pinned", HELM, {"chart": "kube-prometheus-stack", "version": ">=75.0.0"}),
    ("storage-class-encrypted", rules.STORAGE_CLASS_TYPE, {"provisioner": "ebs.csi.aws.com"}),
    (
        "storage-class-encrypted",
        rules.STORAGE_CLASS_TYPE,
        {"provisioner": "ebs.csi.aws.com", "parameters": {"type": "gp3", "encrypted": "false"}},
    ),
]


def test_every_policy_has_a_bad_fixture() -> None:
    assert {name for name, _, _ in BAD_FIXTURES} == set(POLICY_BY_NAME)


@pytest.mark.parametrize(("name", "typ", "props"), BAD_FIXTURES)
def test_policy_rejects_bad_fixture(name: str, typ: str, props: dict[str, Any]) -> None:
    assert violations(POLICY_BY_NAME[name], typ, props)


@pytest.mark.parametrize("policy", rules.POLICIES, ids=lambda p: p.name)
def test_policy_passes_every_resource_our_stacks_create(
    policy: Any, stack_runs: dict[str, Run]
) -> None:
    checked = 0
    for run in stack_runs.values():
        for resource in run.resources:
            found = violations(policy, resource.typ, resource.inputs)
            assert not found, f"{resource.typ} {resource.name}: {found}"
            checked += 1
    assert checked > 200


def test_policies_ignore_unrelated_types() -> None:
    for policy in rules.POLICIES:
        assert not violations(policy, "aws:sqs/queue:Queue", {})


def test_deny_statements_may_use_wildcards() -> None:
    deny = _iam({"Effect": "Deny", "Action": "s3:*", "Resource": "*"})
    assert not violations(POLICY_BY_NAME["iam-no-wildcards"], ROLE_POLICY, deny)


def test_unscopable_describe_calls_may_use_resource_star() -> None:
    ok = _iam({"Effect": "Allow", "Action": ["ec2:DescribeInstanceTypes"], "Resource": "*"})
    assert not violations(POLICY_BY_NAME["iam-no-wildcards"], ROLE_POLICY, ok)


def test_restricted_public_endpoint_is_allowed() -> None:
    vpc = {
        "endpointPrivateAccess": True,
        "endpointPublicAccess": True,
        "publicAccessCidrs": ["203.0.113.10/32"],
    }
    assert not violations(
        POLICY_BY_NAME["eks-endpoint-not-open"], EKS, {**GOOD_EKS, "vpcConfig": vpc}
    )


def test_pack_entrypoint_uses_only_rules_module() -> None:
    from tests.infra.infra_harness import ROOT

    source = (ROOT / "infra" / "policy" / "__main__.py").read_text()
    assert "PolicyPack(" in source
    assert "POLICIES" in source
    config = (ROOT / "infra" / "policy" / "PulumiPolicy.yaml").read_text()
    assert "name: python" in config

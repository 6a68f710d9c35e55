"""Every CrossGuard rule passes on what our stacks create and fails on a bad fixture."""

from __future__ import annotations

import base64
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


PLAIN_LB = {
    "metadata": {"name": "mlflow", "namespace": "mlre-platform"},
    "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
}

PINNED = "ghcr.io/mlflow/mlflow:v3.17.2-full@sha256:" + "0a" * 32
WORKLOAD_KINDS = {
    "kubernetes:apps/v1:Deployment": "spec.template",
    "kubernetes:apps/v1:StatefulSet": "spec.template",
    "kubernetes:apps/v1:DaemonSet": "spec.template",
    "kubernetes:batch/v1:Job": "spec.template",
    "kubernetes:batch/v1:CronJob": "spec.jobTemplate.spec.template",
    "kubernetes:core/v1:Pod": "",
}


def _workload(typ: str, image: str = PINNED, init_image: str = PINNED) -> dict[str, Any]:
    """A workload of kind `typ` with one initContainer and one container."""
    props: dict[str, Any] = {
        "spec": {
            "initContainers": [{"name": "init", "image": init_image}],
            "containers": [{"name": "app", "image": image}],
        }
    }
    for key in reversed([k for k in WORKLOAD_KINDS[typ].split(".") if k]):
        props = {key: props}
    return props


DEPLOYMENT, DAEMONSET = "kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:DaemonSet"
CRONJOB, POD = "kubernetes:batch/v1:CronJob", "kubernetes:core/v1:Pod"
UNPINNED = "images-pinned-by-digest"
MASTER_CREDENTIAL = "no-master-db-credential"
# Objects outside the db-admin namespace that hold the RDS master user (issue 19, finding 4).
_MASTER_URL = "postgresql+psycopg2://mlre_admin:secret@db.example.com:5432/mlre"
_PLATFORM = {"name": "x", "namespace": "mlre-platform"}


def _template_with(container: dict[str, Any]) -> dict[str, Any]:
    """A Deployment's or Job's spec with one container."""
    return {"spec": {"template": {"spec": {"containers": [container]}}}}


MASTER_CREDENTIAL_HOLDERS: list[tuple[str, dict[str, Any]]] = [
    (rules.SECRET_TYPE, {"metadata": _PLATFORM, "stringData": {"URI": _MASTER_URL}}),
    (
        rules.SECRET_TYPE,
        {"metadata": _PLATFORM, "data": {"URI": base64.b64encode(_MASTER_URL.encode()).decode()}},
    ),
    (rules.CONFIG_MAP_TYPE, {"metadata": _PLATFORM, "data": {"auth.ini": _MASTER_URL}}),
    (
        DEPLOYMENT,
        {
            "metadata": _PLATFORM,
            **_template_with({"name": "app", "env": [{"name": "DB", "value": _MASTER_URL}]}),
        },
    ),
    (  # no namespace: `default`
        "kubernetes:batch/v1:Job",
        {"metadata": {"name": "x"}, **_template_with({"name": "psql", "command": [_MASTER_URL]})},
    ),
]

# (policy name, resource type, bad props) — each must be reported.
BAD_FIXTURES: list[tuple[str, str, dict[str, Any]]] = [
    (UNPINNED, DEPLOYMENT, _workload(DEPLOYMENT, image="ghcr.io/mlflow/mlflow:v3.17.2-full")),
    (UNPINNED, CRONJOB, _workload(CRONJOB, init_image="postgres:17.6-alpine")),
    (UNPINNED, POD, _workload(POD, image="ghcr.io/mlflow/mlflow:v3.17.2-full@sha256:abc123")),
    (UNPINNED, POD, _workload(POD, image="ghcr.io/mlflow/mlflow@sha256:" + "0a" * 32)),
    (UNPINNED, DAEMONSET, _workload(DAEMONSET, image="busybox")),
    *((MASTER_CREDENTIAL, typ, props) for typ, props in MASTER_CREDENTIAL_HOLDERS),
    ("public-service-tls", rules.SERVICE_TYPE, PLAIN_LB),
    (  # the Dask operator chart's own ClusterRole: "*" on pods cluster-wide
        "rbac-no-wildcards",
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole",
        {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]},
    ),
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


@pytest.mark.parametrize("typ", WORKLOAD_KINDS)
def test_pinned_images_pass_in_every_workload_kind(typ: str) -> None:
    assert not violations(POLICY_BY_NAME[UNPINNED], typ, _workload(typ))
    # The same object with its init container unpinned is refused: the path is the right one.
    assert violations(POLICY_BY_NAME[UNPINNED], typ, _workload(typ, init_image="busybox:1.37"))


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

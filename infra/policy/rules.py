"""Guard-rail rules: ResourceValidationPolicy objects and their validate functions.

Props are resource inputs as the engine sees them (camelCase). Never construct a PolicyPack
here: __main__.py does, and constructing one starts a gRPC server.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.db_roles import ADMIN_NAMESPACE, MASTER_USER
from infra.policy.iam_allowlist import UNSCOPABLE_READ_ACTIONS
from infra.policy.selectors import policy_types, selects_pod
from mlre import k8s_labels

REQUIRED_LOGS = frozenset({"api", "audit", "authenticator", "controllerManager", "scheduler"})
IAM_POLICY_TYPES = frozenset(
    {
        "aws:iam/policy:Policy",
        "aws:iam/rolePolicy:RolePolicy",
        "aws:iam/userPolicy:UserPolicy",
        "aws:iam/groupPolicy:GroupPolicy",
    }
)
GPU_AMI_MARKERS = ("NVIDIA", "GPU")
HELM_RELEASE_TYPES = frozenset({"kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v4:Chart"})
STORAGE_CLASS_TYPE = "kubernetes:storage.k8s.io/v1:StorageClass"
EBS_PROVISIONERS = frozenset({"ebs.csi.aws.com", "kubernetes.io/aws-ebs"})
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")
S3_SSE_TYPE = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
)


def _only(resource_type: str | frozenset[str], args: ResourceValidationArgs) -> bool:
    """True when the rule applies to this resource type."""
    types = {resource_type} if isinstance(resource_type, str) else resource_type
    return args.resource_type in types


def _as_list(value: Any) -> list:
    """IAM allows a string or a list wherever a list is meant."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _truthy(value: Any) -> bool:
    """Booleans arrive as bools or (on some AWS inputs) as "true"/"false" strings."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


# --- EKS ------------------------------------------------------------------------------------


def eks_logging(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every control-plane log type is shipped to CloudWatch."""
    if not _only("aws:eks/cluster:Cluster", args):
        return
    missing = REQUIRED_LOGS - set(args.props.get("enabledClusterLogTypes") or [])
    if missing:
        report(f"EKS cluster is missing control-plane logs: {sorted(missing)}", None)


def eks_secrets_encryption(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Kubernetes secrets are envelope-encrypted with a KMS key."""
    if not _only("aws:eks/cluster:Cluster", args):
        return
    enc = args.props.get("encryptionConfig") or {}
    if "secrets" not in (enc.get("resources") or []) or not (enc.get("provider") or {}).get(
        "keyArn"
    ):
        report("EKS cluster must encrypt 'secrets' with a KMS key (encryptionConfig)", None)


def eks_endpoint_not_open(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Private endpoint on; public endpoint off or restricted (never 0.0.0.0/0)."""
    if not _only("aws:eks/cluster:Cluster", args):
        return
    vpc = args.props.get("vpcConfig") or {}
    if not _truthy(vpc.get("endpointPrivateAccess")):
        report("EKS private endpoint access must be on", None)
    # AWS defaults endpointPublicAccess to true and publicAccessCidrs to 0.0.0.0/0.
    if vpc.get("endpointPublicAccess") is False:
        return
    cidrs = vpc.get("publicAccessCidrs") or []
    if not cidrs or any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs):
        report("EKS public endpoint is open to the internet; disable it or list CIDRs", None)


# --- EC2 / node groups ----------------------------------------------------------------------


def launch_template_imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """IMDSv2 required with hop limit 1, so pods cannot reach node credentials."""
    if not _only("aws:ec2/launchTemplate:LaunchTemplate", args):
        return
    md = args.props.get("metadataOptions") or {}
    if md.get("httpTokens") != "required":
        report("Launch template must require IMDSv2 (metadataOptions.httpTokens=required)", None)
    if md.get("httpPutResponseHopLimit") != 1:
        report("Launch template must set metadataOptions.httpPutResponseHopLimit=1", None)


def launch_template_ebs_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every EBS volume a launch template defines is encrypted."""
    if not _only("aws:ec2/launchTemplate:LaunchTemplate", args):
        return
    for mapping in args.props.get("blockDeviceMappings") or []:
        if not _truthy((mapping.get("ebs") or {}).get("encrypted")):
            report(f"EBS volume {mapping.get('deviceName')} must be encrypted", None)


def _is_gpu_group(props: Mapping[str, Any]) -> bool:
    """A node group is a GPU pool if its AMI or its pool label says so."""
    ami = str(props.get("amiType") or "")
    label = (props.get("labels") or {}).get(k8s_labels.POOL_LABEL_KEY)
    return any(m in ami for m in GPU_AMI_MARKERS) or label == k8s_labels.GPU_POOL_LABEL_VALUE


def gpu_node_group_guarded(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """GPU node groups carry the GPU NoSchedule taint and can scale to zero."""
    if not _only("aws:eks/nodeGroup:NodeGroup", args) or not _is_gpu_group(args.props):
        return
    taints = args.props.get("taints") or []
    if not any(
        t.get("key") == k8s_labels.GPU_TAINT_KEY and t.get("effect") == "NO_SCHEDULE"
        for t in taints
    ):
        report(f"GPU node group must carry the {k8s_labels.GPU_TAINT_KEY} NoSchedule taint", None)
    if (args.props.get("scalingConfig") or {}).get("minSize") != 0:
        report("GPU node group must have scalingConfig.minSize=0 (scale to zero)", None)


# --- S3 -------------------------------------------------------------------------------------


def s3_sse_kms(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Bucket default encryption is SSE-KMS."""
    if not _only(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        args,
    ):
        return
    rules = args.props.get("rules") or []
    algorithms = [
        (r.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm") for r in rules
    ]
    if not algorithms or any(a not in {"aws:kms", "aws:kms:dsse"} for a in algorithms):
        report("S3 default encryption must be SSE-KMS (sseAlgorithm aws:kms)", None)


def s3_versioning(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Bucket versioning is enabled."""
    if not _only("aws:s3/bucketVersioning:BucketVersioning", args):
        return
    if (args.props.get("versioningConfiguration") or {}).get("status") != "Enabled":
        report("S3 bucket versioning must be Enabled", None)


def s3_public_access_block(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """All four public-access-block switches are on."""
    if not _only("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", args):
        return
    keys = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    off = [k for k in keys if not _truthy(args.props.get(k))]
    if off:
        report(f"S3 public access block must set {off} to true", None)


def s3_ownership_enforced(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Object ownership is BucketOwnerEnforced (ACLs disabled)."""
    if not _only("aws:s3/bucketOwnershipControls:BucketOwnershipControls", args):
        return
    if (args.props.get("rule") or {}).get("objectOwnership") != "BucketOwnerEnforced":
        report("S3 ownership controls must be BucketOwnerEnforced (ACLs off)", None)


def s3_no_public_acl(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """No bucket is created with a public canned ACL."""
    if not _only("aws:s3/bucket:Bucket", args):
        return
    if str(args.props.get("acl") or "").startswith("public"):
        report("S3 bucket must not use a public ACL", None)


# --- data services --------------------------------------------------------------------------


def rds_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """RDS is encrypted, not publicly accessible and backed up."""
    if not _only("aws:rds/instance:Instance", args):
        return
    props = args.props
    if not _truthy(props.get("storageEncrypted")):
        report("RDS storage must be encrypted", None)
    if _truthy(props.get("publiclyAccessible")):
        report("RDS must not be publicly accessible", None)
    if (props.get("backupRetentionPeriod") or 0) < 1:
        report("RDS must keep automated backups (backupRetentionPeriod >= 1)", None)


def elasticache_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Redis is encrypted at rest and in transit and requires AUTH."""
    if not _only("aws:elasticache/replicationGroup:ReplicationGroup", args):
        return
    props = args.props
    if not _truthy(props.get("atRestEncryptionEnabled")):
        report("ElastiCache must encrypt at rest", None)
    if not _truthy(props.get("transitEncryptionEnabled")):
        report("ElastiCache must encrypt in transit (TLS)", None)
    if not props.get("authToken") and not props.get("userGroupIds"):
        report("ElastiCache must require AUTH (authToken or RBAC user groups)", None)


# --- IAM ------------------------------------------------------------------------------------


def _policy_statements(policy: Any) -> list[Mapping[str, Any]]:
    """Statements of an IAM policy given as JSON text or a dict."""
    doc = json.loads(policy) if isinstance(policy, str) else (policy or {})
    return [s for s in _as_list(doc.get("Statement")) if isinstance(s, Mapping)]


def _wildcard_problems(statement: Mapping[str, Any]) -> Iterable[str]:
    """Why one Allow statement is too broad (empty when it is fine)."""
    if statement.get("NotAction") or statement.get("NotResource"):
        yield "uses NotAction/NotResource"
    actions = _as_list(statement.get("Action"))
    for action in actions:
        if "*" in action:
            yield f"action {action!r} has a wildcard"
    for resource in _as_list(statement.get("Resource")):
        if resource == "*" and not set(actions) <= UNSCOPABLE_READ_ACTIONS:
            scopable = sorted(set(actions) - UNSCOPABLE_READ_ACTIONS)
            yield f"Resource '*' for scopable actions {scopable}"
        elif resource != "*" and resource.split(":")[-1] == "*":
            yield f"resource {resource!r} matches every resource of its service"


def iam_no_wildcards(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Allow statements name their actions and resources (no '*')."""
    if not _only(IAM_POLICY_TYPES, args):
        return
    for statement in _policy_statements(args.props.get("policy")):
        if statement.get("Effect") != "Allow":
            continue
        for problem in _wildcard_problems(statement):
            report(f"IAM policy statement {problem}", None)


# --- Kubernetes -----------------------------------------------------------------------------


def helm_chart_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every Helm chart is pinned to one exact version (no range, no 'latest')."""
    if not _only(HELM_RELEASE_TYPES, args):
        return
    version = args.props.get("version")
    if not isinstance(version, str) or not EXACT_VERSION.fullmatch(version):
        report(f"Helm chart {args.props.get('chart')!r} is not pinned (version {version!r})", None)


RBAC_ROLE_TYPES = frozenset(
    {
        "kubernetes:rbac.authorization.k8s.io/v1:Role",
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole",
    }
)
RULE_FIELDS = ("apiGroups", "resources", "verbs")


def rbac_no_wildcards(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Roles we write name their API groups, resources and verbs: no "*" (a chart's own
    ClusterRole, e.g. the Dask operator's, is switched off and replaced by a named Role)."""
    if not _only(RBAC_ROLE_TYPES, args):
        return
    name = (args.props.get("metadata") or {}).get("name")
    for rule in args.props.get("rules") or []:
        for key in RULE_FIELDS:
            if "*" in (rule.get(key) or []):
                report(f"RBAC role {name!r} grants '*' in {key}; name what it needs", None)


def storage_class_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """EBS-backed StorageClasses create encrypted volumes."""
    if not _only(STORAGE_CLASS_TYPE, args) or args.props.get("provisioner") not in EBS_PROVISIONERS:
        return
    if not _truthy((args.props.get("parameters") or {}).get("encrypted")):
        report("EBS StorageClass must set parameters.encrypted: 'true'", None)


LB_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer"
SERVICE_TYPE = "kubernetes:core/v1:Service"
NETWORK_POLICY_TYPE = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
# Workloads whose pods a NetworkPolicy must select: kind -> path to the pod template.
WORKLOAD_TEMPLATES = {
    "kubernetes:apps/v1:Deployment": ("spec", "template"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template"),
    "kubernetes:batch/v1:Job": ("spec", "template"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def public_service_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """A LoadBalancer Service terminates TLS on every port and admits listed CIDRs only."""
    if not _only(SERVICE_TYPE, args):
        return
    spec = args.props.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return
    annotations = (args.props.get("metadata") or {}).get("annotations") or {}
    if not annotations.get(f"{LB_ANNOTATION}-ssl-cert"):
        report(f"LoadBalancer Service needs a TLS certificate ({LB_ANNOTATION}-ssl-cert)", None)
    tls_ports = {
        p.strip() for p in str(annotations.get(f"{LB_ANNOTATION}-ssl-ports", "")).split(",")
    }
    for port in spec.get("ports") or []:
        if "*" not in tls_ports and not {str(port.get("name")), str(port.get("port"))} & tls_ports:
            report(f"LoadBalancer port {port.get('port')} is plain text (not in ssl-ports)", None)
    ranges = spec.get("loadBalancerSourceRanges") or []
    if not ranges or any(ipaddress.ip_network(c).prefixlen == 0 for c in ranges):
        report("LoadBalancer Service must list loadBalancerSourceRanges (never 0.0.0.0/0)", None)


def _pod_template(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod template of a workload resource (None for anything else)."""
    path = WORKLOAD_TEMPLATES.get(resource_type)
    node: Any = props
    for key in path or ():
        node = (node or {}).get(key)
    return node if path else None


def workloads_have_network_policy(args: StackValidationArgs, report: ReportViolation) -> None:
    """Every workload's pods are selected by an Ingress NetworkPolicy of their namespace."""
    policies = [
        {"metadata": r.props.get("metadata") or {}, "spec": r.props.get("spec") or {}}
        for r in args.resources
        if r.resource_type == NETWORK_POLICY_TYPE
    ]
    for resource in args.resources:
        template = _pod_template(resource.resource_type, resource.props)
        if template is None:
            continue
        namespace = (resource.props.get("metadata") or {}).get("namespace") or "default"
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not any(
            selects_pod(p, namespace, labels) and "Ingress" in policy_types(p["spec"])
            for p in policies
        ):
            report(
                f"{resource.resource_type.rsplit(':', 1)[-1]} {resource.name} in {namespace} is "
                "selected by no NetworkPolicy: add one (infra/network_policies.py)",
                resource.urn,
            )


POD_TYPE = "kubernetes:core/v1:Pod"
PINNED_IMAGE = re.compile(r"[^@\s]+:[^@/\s]+@sha256:[0-9a-f]{64}")


def _pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec of a Pod or workload resource (None for anything else)."""
    if resource_type == POD_TYPE:
        return props.get("spec") or {}
    template = _pod_template(resource_type, props)
    return None if template is None else (template.get("spec") or {})


def images_pinned_by_digest(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every container and initContainer image is `repo:tag@sha256:<digest>` (immutable)."""
    spec = _pod_spec(args.resource_type, args.props)
    for field in ("initContainers", "containers"):
        for container in (spec or {}).get(field) or []:
            image = container.get("image")
            if not isinstance(image, str) or not PINNED_IMAGE.fullmatch(image):
                report(
                    f"{field} {container.get('name')!r} image {image!r} is not pinned by digest: "
                    "use <repository>:<tag>@sha256:<digest> (`crane digest <image:tag>`)",
                    None,
                )


SECRET_TYPE = "kubernetes:core/v1:Secret"
CONFIG_MAP_TYPE = "kubernetes:core/v1:ConfigMap"


def _decoded(value: Any) -> str:
    """A Secret `data` value as text (base64, as the API stores it); undecodable: as given."""
    try:
        return base64.b64decode(str(value), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return str(value)


def _credential_carriers(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Every value a pod could read: Secret/ConfigMap data, container env values and argv."""
    if resource_type == SECRET_TYPE:
        data = [_decoded(v) for v in (props.get("data") or {}).values()]
        return data + [str(v) for v in (props.get("stringData") or {}).values()]
    if resource_type == CONFIG_MAP_TYPE:
        return [str(v) for v in (props.get("data") or {}).values()]
    spec = _pod_spec(resource_type, props) or {}
    values: list[str] = []
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        values += [str(e["value"]) for e in container.get("env") or [] if "value" in e]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        values += [str(a) for a in argv]
    return values


def no_master_db_credential(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Only the db-admin namespace holds the RDS master user's credential: no other Secret,
    ConfigMap or pod env names it (services connect as their own roles, infra/db_roles.py)."""
    namespace = (args.props.get("metadata") or {}).get("namespace") or "default"
    if namespace == ADMIN_NAMESPACE:
        return
    if any(MASTER_USER in value for value in _credential_carriers(args.resource_type, args.props)):
        kind = args.resource_type.rsplit(":", 1)[-1]
        report(
            f"{kind} in {namespace} holds the RDS master user {MASTER_USER!r}: give the service "
            f"its own role (infra/db_roles.py); the master stays in {ADMIN_NAMESPACE}",
            None,
        )


def _policy(name: str, description: str, validate: Any) -> ResourceValidationPolicy:
    """A mandatory resource policy."""
    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


POLICIES: list[ResourceValidationPolicy] = [
    _policy("eks-control-plane-logging", "EKS ships all control-plane logs.", eks_logging),
    _policy("eks-secrets-encryption", "EKS encrypts secrets with KMS.", eks_secrets_encryption),
    _policy(
        "eks-endpoint-not-open", "EKS API is private or CIDR-restricted.", eks_endpoint_not_open
    ),
    _policy("launch-template-imdsv2", "IMDSv2 required, hop limit 1.", launch_template_imdsv2),
    _policy(
        "launch-template-ebs-encrypted",
        "Node EBS volumes are encrypted.",
        launch_template_ebs_encrypted,
    ),
    _policy(
        "gpu-node-group-guarded",
        "GPU node groups are tainted and scale to zero.",
        gpu_node_group_guarded,
    ),
    _policy("s3-sse-kms", "S3 buckets default to SSE-KMS.", s3_sse_kms),
    _policy("s3-versioning", "S3 buckets are versioned.", s3_versioning),
    _policy("s3-public-access-block", "S3 public access is blocked.", s3_public_access_block),
    _policy("s3-ownership-enforced", "S3 ACLs are disabled.", s3_ownership_enforced),
    _policy("s3-no-public-acl", "No public canned ACLs.", s3_no_public_acl),
    _policy("rds-hardened", "RDS encrypted, private, backed up.", rds_hardened),
    _policy("elasticache-hardened", "Redis encrypted with AUTH.", elasticache_hardened),
    _policy("iam-no-wildcards", "IAM policies without wildcards.", iam_no_wildcards),
    _policy("helm-chart-pinned", "Helm charts pinned to exact versions.", helm_chart_pinned),
    _policy("rbac-no-wildcards", "RBAC roles name groups, resources and verbs.", rbac_no_wildcards),
    _policy(
        "storage-class-encrypted", "EBS StorageClasses encrypt volumes.", storage_class_encrypted
    ),
    _policy(
        "public-service-tls", "Public Services are TLS-only and CIDR-bound.", public_service_tls
    ),
    _policy(
        "images-pinned-by-digest",
        "Workload container images are pinned by sha256 digest.",
        images_pinned_by_digest,
    ),
    _policy(
        "no-master-db-credential",
        "No pod outside the db-admin namespace holds the RDS master credential.",
        no_master_db_credential,
    ),
]

# Rules over the whole stack (they compare resources with each other).
STACK_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="workloads-have-network-policy",
        description="Every workload is selected by a NetworkPolicy.",
        validate=workloads_have_network_policy,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
]

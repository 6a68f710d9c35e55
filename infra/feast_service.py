"""Feast feature server: Redis online store, SQL registry on RDS, file offline store on S3,
Feast's Kubernetes auth in front of its HTTP API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import iam
from infra.config import PublicExposure
from infra.db_bootstrap import DatabaseAccess
from infra.k8s import (
    ClusterAccess,
    ConfigVolume,
    app_secret,
    cpu_autoscaler,
    hardened_deployment,
    http_probes,
    http_service,
    irsa_service_account,
    resources,
)

APP = "feast"
PORT = 6566
CONFIG_DIR = "/feast"
RBAC_GROUP = "rbac.authorization.k8s.io"
# The Role that lets the server read its namespace's RoleBindings (Feast's role lookup).
ROLE_LOOKUP = "feast-role-lookup"


def feature_store_yaml(project: str, lake_bucket: str) -> str:
    """Production feature_store.yaml; secrets stay ${VARS} that Feast expands at load time."""
    return (
        f"project: {project}\n"
        "provider: local\n"
        "registry:\n"
        "  registry_type: sql\n"
        "  path: ${FEAST_REGISTRY_URL}\n"
        "  cache_ttl_seconds: 60\n"
        "  sqlalchemy_config_kwargs:\n"
        "    pool_pre_ping: true\n"
        "online_store:\n"
        "  type: redis\n"
        "  redis_type: redis\n"
        "  connection_string: ${FEAST_REDIS_CONNECTION}\n"
        "offline_store:\n"
        "  type: file\n"
        f"# Offline data (FileSource paths) lives under s3://{lake_bucket}/\n"
        "entity_key_serialization_version: 3\n"
        "# Callers send their service-account token; their roles are the Roles it is bound to\n"
        "# in this namespace, checked against the registry's permissions (feature_repo).\n"
        "auth:\n"
        "  type: kubernetes\n"
    )


@dataclass(frozen=True)
class FeastCaller:
    """A service account given a Feast role (mlre.k8s_labels.FEAST_*_ROLE)."""

    role: str
    namespace: str
    service_account: str


def token_review_rules() -> list[dict]:
    """What Feast's Kubernetes auth needs cluster-wide: TokenReviews of the callers' tokens."""
    return [
        {
            "api_groups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        }
    ]


def role_lookup_rules() -> list[dict]:
    """What it needs in its own namespace: list the RoleBindings whose roleRef names are the
    caller's roles (feast.permissions.auth.kubernetes_token_parser.get_roles)."""
    return [{"api_groups": [RBAC_GROUP], "resources": ["rolebindings"], "verbs": ["list"]}]


def role_subjects(callers: Sequence[FeastCaller]) -> dict[str, list[dict]]:
    """RoleBinding subjects per Feast role, in the order the callers were given."""
    subjects: dict[str, list[dict]] = {}
    for caller in callers:
        subjects.setdefault(caller.role, []).append(
            {
                "kind": "ServiceAccount",
                "name": caller.service_account,
                "namespace": caller.namespace,
            }
        )
    return subjects


def _feast_account(namespace: str) -> list[dict]:
    return [{"kind": "ServiceAccount", "name": APP, "namespace": namespace}]


def auth_rbac(
    name: str, namespace: str, callers: Sequence[FeastCaller], opts: pulumi.ResourceOptions
) -> None:
    """The Kubernetes objects Feast's Kubernetes auth reads: the server may review tokens and
    list its namespace's RoleBindings; each Feast role is a rule-less Role there (it grants
    nothing in Kubernetes, only its name counts), bound to the callers given that role. Feast
    also tries to list ClusterRoleBindings to collect groups; our policies are role-based, so
    that read is not granted (Feast logs the refusal and carries on)."""
    cluster_name = f"{namespace}-feast-token-review"  # cluster-scoped: one per platform namespace
    k8s.rbac.v1.ClusterRole(
        f"{name}-token-review-role",
        metadata={"name": cluster_name},
        rules=token_review_rules(),
        opts=opts,
    )
    k8s.rbac.v1.ClusterRoleBinding(
        f"{name}-token-review-binding",
        metadata={"name": cluster_name},
        role_ref={"api_group": RBAC_GROUP, "kind": "ClusterRole", "name": cluster_name},
        subjects=_feast_account(namespace),
        opts=opts,
    )
    bindings = {ROLE_LOOKUP: (role_lookup_rules(), _feast_account(namespace))}
    bindings |= {role: ([], subjects) for role, subjects in role_subjects(callers).items()}
    for role, (rules, subjects) in bindings.items():
        metadata = {"name": role, "namespace": namespace}
        k8s.rbac.v1.Role(f"{name}-{role}-role", metadata=metadata, rules=rules, opts=opts)
        k8s.rbac.v1.RoleBinding(
            f"{name}-{role}-binding",
            metadata=metadata,
            role_ref={"api_group": RBAC_GROUP, "kind": "Role", "name": role},
            subjects=subjects,
            opts=opts,
        )


@dataclass(frozen=True)
class FeatureStoreAccess:
    """How a pod reaches the feature store: Redis online store, S3 offline lake (the SQL
    registry is per service: each connects as its own database role, a DatabaseAccess)."""

    region: str
    lake_bucket: pulumi.Input[str]
    readable_bucket_arns: list[pulumi.Input[str]]  # the lake and registry buckets, read-only
    redis_connection: pulumi.Input[str]


class FeastService(pulumi.ComponentResource):
    """ConfigMap, Secret, IRSA ServiceAccount, Deployment, Service and HPA of the feature server."""

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        image: str,
        project: str,
        min_replicas: int,
        max_replicas: int,
        public: PublicExposure | None,
        store: FeatureStoreAccess,
        registry: DatabaseAccess,  # the `feast` role: owns the registry's tables
        callers: Sequence[FeastCaller],
        kms_key_arn: pulumi.Input[str],
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:FeastService", name, None, opts)
        k8s_opts = access.child_opts(self)
        policy = pulumi.Output.all(kms_key_arn, *store.readable_bucket_arns).apply(
            lambda a: iam.document(iam.s3_access_statements(a[1:], a[0], write=False))
        )
        irsa_service_account(
            name,
            access,
            service_account=APP,
            namespace=namespace,
            policy=policy,
            parent=self,
        )
        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata={"name": f"{APP}-config", "namespace": namespace},
            data={
                "feature_store.yaml": pulumi.Output.from_input(store.lake_bucket).apply(
                    lambda b: feature_store_yaml(project, b)
                )
            },
            opts=k8s_opts,
        )
        secret_name = app_secret(
            name,
            app=APP,
            namespace=namespace,
            string_data={
                "FEAST_REGISTRY_URL": registry.url,
                "FEAST_REDIS_CONNECTION": store.redis_connection,
            },
            opts=k8s_opts,
        )
        config_volume = {"config_map": {"name": config.metadata.apply(lambda m: m["name"])}}
        hardened_deployment(
            f"{name}-deployment",
            app=APP,
            namespace=namespace,
            uid=1000,
            image=image,
            args=["feast", f"--chdir={CONFIG_DIR}", "serve", "--host=0.0.0.0", f"--port={PORT}"],
            port=PORT,
            env_from_secret=secret_name,
            env=[{"name": "AWS_REGION", "value": store.region}],
            resources=resources("250m", "1Gi"),
            probes=http_probes("/health", PORT),
            config_volumes=[ConfigVolume("config", CONFIG_DIR, config_volume), registry.ca_volume],
            pod_annotations=registry.pod_annotations(),
            # Feast's Kubernetes auth calls the API (TokenReview, RoleBindings) with this pod's
            # service-account token and reads its namespace from the same mount: keep it.
            pod_fields={"automount_service_account_token": True},
            # No fixed replicas: the HPA owns the count. Its role exists once the Job has run.
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(depends_on=[registry.ready])
            ),
        )
        auth_rbac(name, namespace, callers, k8s_opts)
        self.url = http_service(name, app=APP, namespace=namespace, public=public, opts=k8s_opts)
        cpu_autoscaler(
            name,
            app=APP,
            namespace=namespace,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            cpu_target=70,
            opts=k8s_opts,
        )
        self.register_outputs({"url": self.url})

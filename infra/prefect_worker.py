"""Prefect workers for the k8s-cpu and k8s-gpu pools, plus the IRSA identity flow jobs run as."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra import iam
from infra.k8s import (
    cpu_pool_selector,
    irsa_service_account,
    pod_security_context,
    resources,
    restricted_security_context,
)
from mlre import k8s_labels

WORKER_SA = "prefect-worker"
HEALTH_PORT = 8080
WORK_POOLS = (k8s_labels.CPU_WORK_POOL, k8s_labels.GPU_WORK_POOL)

# What a Kubernetes worker does in its namespace: run Jobs, watch their pods, read their logs.
WORKER_RULES = [
    {
        "api_groups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"api_groups": [""], "resources": ["pods", "pods/status"], "verbs": ["get", "list", "watch"]},
    {"api_groups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"api_groups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    {"api_groups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update", "patch"]},
]


def worker_args(pool: str) -> list[str]:
    """`prefect worker start` for one Kubernetes work pool (created if missing)."""
    return [
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "kubernetes",
        "--with-healthcheck",
    ]


class PrefectWorkers(pulumi.ComponentResource):
    """Flow-job identity (IRSA), worker RBAC, API secret and one worker Deployment per pool."""

    def __init__(
        self,
        name: str,
        *,
        image: str,
        api_url: str,
        api_key: pulumi.Input[str],
        data_bucket_arns: list[pulumi.Input[str]],
        kms_key_arn: pulumi.Input[str],
        oidc_provider_arn: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:PrefectWorkers", name, None, opts)
        ns = k8s_labels.FLOWS_NAMESPACE
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        policy = pulumi.Output.all(kms_key_arn, *data_bucket_arns).apply(
            lambda a: iam.document(iam.s3_access_statements(a[1:], a[0], write=True))
        )
        self.flows_role = irsa_service_account(
            f"{name}-flows",
            service_account=k8s_labels.FLOWS_SERVICE_ACCOUNT,
            namespace=ns,
            policy=policy,
            oidc_provider_arn=oidc_provider_arn,
            oidc_issuer_url=oidc_issuer_url,
            parent=self,
            provider=provider,
        )
        k8s.core.v1.ServiceAccount(
            f"{name}-worker-sa", metadata={"name": WORKER_SA, "namespace": ns}, opts=k8s_opts
        )
        k8s.rbac.v1.Role(
            f"{name}-worker-role",
            metadata={"name": WORKER_SA, "namespace": ns},
            rules=WORKER_RULES,
            opts=k8s_opts,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-worker-binding",
            metadata={"name": WORKER_SA, "namespace": ns},
            role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "Role", "name": WORKER_SA},
            subjects=[{"kind": "ServiceAccount", "name": WORKER_SA, "namespace": ns}],
            opts=k8s_opts,
        )
        secret = k8s.core.v1.Secret(
            f"{name}-api-secret",
            metadata={"name": "prefect-api", "namespace": ns},
            string_data={"PREFECT_API_KEY": api_key},
            opts=k8s_opts,
        )
        secret_name = secret.metadata.apply(lambda m: m["name"])
        for pool in WORK_POOLS:
            self._worker(
                name,
                pool=pool,
                image=image,
                api_url=api_url,
                secret_name=secret_name,
                opts=k8s_opts,
            )
        self.work_pools = list(WORK_POOLS)
        self.register_outputs(
            {"work_pools": self.work_pools, "flows_role_arn": self.flows_role.arn}
        )

    def _worker(
        self,
        name: str,
        *,
        pool: str,
        image: str,
        api_url: str,
        secret_name: pulumi.Output[str],
        opts: pulumi.ResourceOptions,
    ) -> k8s.apps.v1.Deployment:
        """One worker Deployment; it polls Prefect and submits flow runs as Jobs."""
        labels = {
            "app.kubernetes.io/name": "prefect-worker",
            "app.kubernetes.io/instance": f"prefect-worker-{pool}",
        }
        health = {"http_get": {"path": "/health", "port": HEALTH_PORT}}
        return k8s.apps.v1.Deployment(
            f"{name}-{pool}",
            metadata={
                "name": f"prefect-worker-{pool}",
                "namespace": k8s_labels.FLOWS_NAMESPACE,
                "labels": labels,
            },
            spec={
                "replicas": 1,
                "selector": {"match_labels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "service_account_name": WORKER_SA,
                        "node_selector": cpu_pool_selector(),
                        "security_context": pod_security_context(1001),
                        "containers": [
                            {
                                "name": "worker",
                                "image": image,
                                "args": worker_args(pool),
                                "env": [
                                    {"name": "PREFECT_API_URL", "value": api_url},
                                    {
                                        "name": "PREFECT_API_KEY",
                                        "value_from": {
                                            "secret_key_ref": {
                                                "name": secret_name,
                                                "key": "PREFECT_API_KEY",
                                            }
                                        },
                                    },
                                    {"name": "PREFECT_WORKER_WEBSERVER_HOST", "value": "0.0.0.0"},
                                    {
                                        "name": "PREFECT_WORKER_WEBSERVER_PORT",
                                        "value": str(HEALTH_PORT),
                                    },
                                    {"name": "PREFECT_HOME", "value": "/tmp/prefect"},
                                    {"name": "HOME", "value": "/tmp"},
                                ],
                                "ports": [{"name": "health", "container_port": HEALTH_PORT}],
                                "resources": resources("100m", "512Mi"),
                                "security_context": restricted_security_context(),
                                "volume_mounts": [{"name": "tmp", "mount_path": "/tmp"}],
                                "readiness_probe": {**health, "period_seconds": 15},
                                "liveness_probe": {
                                    **health,
                                    "period_seconds": 30,
                                    "initial_delay_seconds": 30,
                                    "failure_threshold": 3,
                                },
                            }
                        ],
                        "volumes": [{"name": "tmp", "empty_dir": {}}],
                    },
                },
            },
            opts=opts,
        )

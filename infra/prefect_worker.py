"""Prefect workers for the k8s-cpu and k8s-gpu pools, plus the IRSA identity flow jobs run as."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import iam
from infra.db_bootstrap import fingerprint
from infra.k8s import (
    APP_LABEL,
    ClusterAccess,
    hardened_deployment,
    irsa_service_account,
    resources,
    secret_env,
)
from mlre import k8s_labels

WORKER_SA = "prefect-worker"
HEALTH_PORT = 8080
WORK_POOLS = (k8s_labels.CPU_WORK_POOL, k8s_labels.GPU_WORK_POOL)
# Pod-template annotation: a hash of the credential, so the workers roll when it rotates.
CREDENTIAL_ANNOTATION = "mlre.io/prefect-credential"

# The Secret holding the Prefect credential, in the flows namespace: the API key (Prefect Cloud
# or the user's server) or the in-cluster server's basic-auth string, under its env var's name.
API_SECRET = "prefect-api"
RESULTS_PREFIX = "prefect-results"
API_KEY_ENTRY = "PREFECT_API_KEY"
AUTH_STRING_ENTRY = "PREFECT_API_AUTH_STRING"
# prefect-kubernetes settings: the worker replaces the plain credential it would write into every
# flow-run Job with a secretKeyRef to this Secret (it needs both; name alone does nothing).
_SETTINGS = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER"
CREDENTIAL_SECRET_SETTINGS = {
    API_KEY_ENTRY: (f"{_SETTINGS}_API_KEY_SECRET_NAME", f"{_SETTINGS}_API_KEY_SECRET_KEY"),
    AUTH_STRING_ENTRY: (
        f"{_SETTINGS}_API_AUTH_STRING_SECRET_NAME",
        f"{_SETTINGS}_API_AUTH_STRING_SECRET_KEY",
    ),
}


@dataclass(frozen=True)
class PrefectClient:
    """How a pod reaches the Prefect API: the URL and the one credential it sends, named by its
    env var (PREFECT_API_KEY: Prefect Cloud; PREFECT_API_AUTH_STRING: the in-cluster server;
    Prefect's clients send the key first, so a pod never gets both)."""

    url: pulumi.Input[str]
    credential_env: str
    credential: pulumi.Input[str]  # a secret

    def __post_init__(self) -> None:
        if self.credential_env not in CREDENTIAL_SECRET_SETTINGS:
            raise ValueError(f"unknown Prefect credential {self.credential_env!r}")

    def pod_annotations(self) -> dict[str, pulumi.Output[str]]:
        """The credential's fingerprint (never the value) for a client's pod template."""
        digest = pulumi.Output.from_input(self.credential).apply(fingerprint)
        return {CREDENTIAL_ANNOTATION: pulumi.Output.unsecret(digest)}


# What a Kubernetes worker does in its namespace: run Jobs, watch their pods, read their logs.
# No access to Secrets: with the API-key Secret named, the worker never reads, creates or
# patches one (prefect-kubernetes 0.8 touches Secrets only for create_secret_for_api_key and
# store_env_as_secret, both off); flow pods get the key from the kubelet via secretKeyRef.
WORKER_RULES = [
    {
        "api_groups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"api_groups": [""], "resources": ["pods", "pods/status"], "verbs": ["get", "list", "watch"]},
    {"api_groups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"api_groups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
]


def credential_secret_settings(credential_env: str, secret_name: pulumi.Input[str]) -> list[dict]:
    """Worker env that makes flow-run Jobs read `credential_env` from `secret_name`."""
    name_setting, key_setting = CREDENTIAL_SECRET_SETTINGS[credential_env]
    return [
        {"name": name_setting, "value": secret_name},
        {"name": key_setting, "value": credential_env},
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
        api: PrefectClient,
        data_bucket_arns: list[pulumi.Input[str]],
        results_bucket: pulumi.Input[str],
        kms_key_arn: pulumi.Input[str],
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:PrefectWorkers", name, None, opts)
        ns = k8s_labels.FLOWS_NAMESPACE
        k8s_opts = access.child_opts(self)
        policy = pulumi.Output.all(kms_key_arn, *data_bucket_arns).apply(
            lambda a: iam.flows_policy(a[1:], a[0])
        )
        self.flows_role = irsa_service_account(
            f"{name}-flows",
            access,
            service_account=k8s_labels.FLOWS_SERVICE_ACCOUNT,
            namespace=ns,
            policy=policy,
            parent=self,
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
        # Where flow runs persist resumable results (flows/resume.py); a pod's disk dies with it.
        self.results_uri = pulumi.Output.concat("s3://", results_bucket, "/", RESULTS_PREFIX)
        k8s.core.v1.ConfigMap(
            f"{name}-results",
            metadata={"name": k8s_labels.FLOWS_RESULTS_CONFIG_MAP, "namespace": ns},
            data={"MLRE_RESULTS_URI": self.results_uri},
            opts=k8s_opts,
        )
        secret = k8s.core.v1.Secret(
            f"{name}-api-secret",
            metadata={"name": API_SECRET, "namespace": ns},
            string_data={api.credential_env: api.credential},
            opts=k8s_opts,
        )
        secret_name = secret.metadata.apply(lambda m: m["name"])
        for pool in WORK_POOLS:
            self._worker(
                name,
                pool=pool,
                image=image,
                api=api,
                secret_name=secret_name,
                opts=k8s_opts,
            )
        self.work_pools = list(WORK_POOLS)
        self.register_outputs(
            {
                "work_pools": self.work_pools,
                "flows_role_arn": self.flows_role.arn,
                "results_uri": self.results_uri,
            }
        )

    def _worker(
        self,
        name: str,
        *,
        pool: str,
        image: str,
        api: PrefectClient,
        secret_name: pulumi.Output[str],
        opts: pulumi.ResourceOptions,
    ) -> k8s.apps.v1.Deployment:
        """One worker Deployment; it polls Prefect and submits flow runs as Jobs."""
        app = f"prefect-worker-{pool}"
        labels = {APP_LABEL: "prefect-worker", "app.kubernetes.io/instance": app}
        health = {"http_get": {"path": "/health", "port": HEALTH_PORT}}
        return hardened_deployment(
            f"{name}-{pool}",
            app=app,
            namespace=k8s_labels.FLOWS_NAMESPACE,
            labels=labels,
            service_account=WORKER_SA,
            uid=1001,
            container_name="worker",
            image=image,
            args=worker_args(pool),
            port=HEALTH_PORT,
            port_name="health",
            env=[
                {"name": "PREFECT_API_URL", "value": api.url},
                secret_env(api.credential_env, secret_name),
                *credential_secret_settings(api.credential_env, secret_name),
                {"name": "PREFECT_WORKER_WEBSERVER_HOST", "value": "0.0.0.0"},
                {"name": "PREFECT_WORKER_WEBSERVER_PORT", "value": str(HEALTH_PORT)},
                {"name": "PREFECT_HOME", "value": "/tmp/prefect"},
            ],
            resources=resources("100m", "512Mi"),
            pod_annotations=api.pod_annotations(),
            probes={
                "readiness_probe": {**health, "period_seconds": 15},
                "liveness_probe": {
                    **health,
                    "period_seconds": 30,
                    "initial_delay_seconds": 30,
                    "failure_threshold": 3,
                },
            },
            replicas=1,
            opts=opts,
        )

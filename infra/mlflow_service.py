"""MLflow tracking server: RDS backend, S3 artifacts proxied via IRSA, basic-auth on."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import iam
from infra.k8s import (
    cpu_pool_selector,
    http_probes,
    http_service,
    irsa_service_account,
    pod_security_context,
    resources,
    restricted_security_context,
)

APP = "mlflow"
PORT = 5000
AUTH_DIR = "/etc/mlflow-auth"


def auth_ini(database_uri: str) -> str:
    """basic-auth config: users live in the same PostgreSQL (own alembic table), READ by default."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def allowed_hosts(namespace: str, public: bool) -> str:
    """Host headers the MLflow security middleware accepts (in-cluster DNS, port-forward)."""
    if public:
        return "*"  # the LB hostname is only known after creation
    fqdn = f"{APP}.{namespace}.svc.cluster.local"
    hosts = [fqdn, f"{fqdn}:*", f"{APP}.{namespace}", f"{APP}.{namespace}:*", "localhost:*"]
    return ",".join(hosts)


def mlflow_args(artifact_bucket: str, namespace: str, public: bool) -> list[str]:
    """`mlflow server` command line; secrets arrive through env vars, never argv."""
    return [
        "mlflow",
        "server",
        "--host=0.0.0.0",
        f"--port={PORT}",
        "--workers=2",
        "--app-name=basic-auth",
        "--serve-artifacts",
        f"--artifacts-destination=s3://{artifact_bucket}/artifacts",
        f"--allowed-hosts={allowed_hosts(namespace, public)}",
    ]


class MlflowService(pulumi.ComponentResource):
    """ServiceAccount (IRSA), secrets, Deployment and Service of the tracking server."""

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        image: str,
        replicas: int,
        public: bool,
        artifact_bucket: pulumi.Input[str],
        artifact_bucket_arn: pulumi.Input[str],
        kms_key_arn: pulumi.Input[str],
        backend_uri: pulumi.Input[str],
        oidc_provider_arn: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:MlflowService", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        policy = pulumi.Output.all(artifact_bucket_arn, kms_key_arn).apply(
            lambda a: iam.document(iam.s3_access_statements([a[0]], a[1], write=True))
        )
        irsa_service_account(
            name,
            service_account=APP,
            namespace=namespace,
            policy=policy,
            oidc_provider_arn=oidc_provider_arn,
            oidc_issuer_url=oidc_issuer_url,
            parent=self,
            provider=provider,
        )
        self.admin_password = random.RandomPassword(
            f"{name}-admin-password",
            length=24,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata={"name": f"{APP}-secrets", "namespace": namespace},
            string_data={
                "MLFLOW_BACKEND_STORE_URI": backend_uri,
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password.result,
                "basic_auth.ini": pulumi.Output.from_input(backend_uri).apply(auth_ini),
            },
            opts=k8s_opts,
        )
        labels = {"app.kubernetes.io/name": APP}
        secret_name = secret.metadata.apply(lambda m: m["name"])
        args = pulumi.Output.from_input(artifact_bucket).apply(
            lambda b: mlflow_args(b, namespace, public)
        )
        env_from_secret = [
            {
                "name": key,
                "value_from": {"secret_key_ref": {"name": secret_name, "key": key}},
            }
            for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD")
        ]
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={"name": APP, "namespace": namespace, "labels": labels},
            spec={
                "replicas": replicas,
                "selector": {"match_labels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "service_account_name": APP,
                        "node_selector": cpu_pool_selector(),
                        "security_context": pod_security_context(1000),
                        "containers": [
                            {
                                "name": APP,
                                "image": image,
                                "args": args,
                                "ports": [{"name": "http", "container_port": PORT}],
                                "env": [
                                    *env_from_secret,
                                    {
                                        "name": "MLFLOW_AUTH_CONFIG_PATH",
                                        "value": f"{AUTH_DIR}/basic_auth.ini",
                                    },
                                    {"name": "HOME", "value": "/tmp"},
                                ],
                                "resources": resources("250m", "1Gi"),
                                "security_context": restricted_security_context(),
                                "volume_mounts": [
                                    {"name": "tmp", "mount_path": "/tmp"},
                                    {"name": "auth", "mount_path": AUTH_DIR, "read_only": True},
                                ],
                                **http_probes("/health", PORT),
                            }
                        ],
                        "volumes": [
                            {"name": "tmp", "empty_dir": {}},
                            {
                                "name": "auth",
                                "secret": {
                                    "secret_name": secret_name,
                                    "items": [{"key": "basic_auth.ini", "path": "basic_auth.ini"}],
                                },
                            },
                        ],
                    },
                },
            },
            opts=k8s_opts,
        )
        service = http_service(
            name, app=APP, namespace=namespace, labels=labels, public=public, opts=k8s_opts
        )
        self.url = pulumi.Output.concat("http://", APP, ".", namespace, ".svc.cluster.local")
        if public:
            self.url = service.status.apply(
                lambda s: f"http://{s.load_balancer.ingress[0].hostname}"
            )
        self.register_outputs({"url": self.url})

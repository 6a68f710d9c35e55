"""MLflow tracking server: RDS backend, S3 artifacts proxied via IRSA, basic-auth on."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from infra import iam
from infra.config import PublicExposure
from infra.db_bootstrap import DatabaseAccess
from infra.k8s import (
    ClusterAccess,
    ConfigVolume,
    app_secret,
    hardened_deployment,
    http_probes,
    http_service,
    in_cluster_url,
    irsa_service_account,
    resources,
    secret_env,
)
from infra.mlflow_user import MlflowAdmin

APP = "mlflow"
PORT = 5000
AUTH_DIR = "/etc/mlflow-auth"
ADMIN_USER = "admin"  # created by basic-auth on first start; only MLflow and MlflowUser Jobs use it


def auth_ini(database_uri: str) -> str:
    """basic-auth config: users live in the same PostgreSQL (own alembic table), READ by default."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def allowed_hosts(namespace: str, public: PublicExposure | None) -> str:
    """Host headers the MLflow security middleware accepts: in-cluster DNS, port-forward and,
    when published, its public name only (never `*`: the check stops DNS rebinding)."""
    fqdn = f"{APP}.{namespace}.svc.cluster.local"
    hosts = [fqdn, f"{fqdn}:*", f"{APP}.{namespace}", f"{APP}.{namespace}:*", "localhost:*"]
    if public is not None:
        hosts += [public.hostname(APP), f"{public.hostname(APP)}:*"]
    return ",".join(hosts)


def mlflow_args(artifact_bucket: str, namespace: str, public: PublicExposure | None) -> list[str]:
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
        public: PublicExposure | None,
        artifact_bucket: pulumi.Input[str],
        artifact_bucket_arn: pulumi.Input[str],
        kms_key_arn: pulumi.Input[str],
        database: DatabaseAccess,  # the `mlflow` role: tracking and basic-auth tables
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:MlflowService", name, None, opts)
        k8s_opts = access.child_opts(self)
        policy = pulumi.Output.all(artifact_bucket_arn, kms_key_arn).apply(
            lambda a: iam.document(iam.s3_access_statements([a[0]], a[1], write=True))
        )
        irsa_service_account(
            name,
            access,
            service_account=APP,
            namespace=namespace,
            policy=policy,
            parent=self,
        )
        self.admin_password = random.RandomPassword(
            f"{name}-admin-password",
            length=24,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # basic-auth refuses to start without a static CSRF key, the same in every worker/pod.
        flask_key = random.RandomPassword(
            f"{name}-flask-secret-key",
            length=48,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        secret_name = app_secret(
            name,
            app=APP,
            namespace=namespace,
            string_data={
                "MLFLOW_BACKEND_STORE_URI": database.url,
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password.result,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_key.result,
                "basic_auth.ini": database.url.apply(auth_ini),
            },
            opts=k8s_opts,
        )
        # What an MlflowUser Job needs to act as the admin (the password stays in this Secret).
        self.admin = MlflowAdmin(
            url=in_cluster_url(APP, namespace),
            image=image,
            username=ADMIN_USER,
            secret_name=secret_name,
        )
        args = pulumi.Output.from_input(artifact_bucket).apply(
            lambda b: mlflow_args(b, namespace, public)
        )
        auth_file = {"key": "basic_auth.ini", "path": "basic_auth.ini"}
        auth_volume = {"secret": {"secret_name": secret_name, "items": [auth_file]}}
        hardened_deployment(
            f"{name}-deployment",
            app=APP,
            namespace=namespace,
            uid=1000,
            image=image,
            args=args,
            port=PORT,
            env=[
                secret_env("MLFLOW_BACKEND_STORE_URI", secret_name),
                secret_env("MLFLOW_AUTH_ADMIN_PASSWORD", secret_name),
                secret_env("MLFLOW_FLASK_SERVER_SECRET_KEY", secret_name),
                {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": f"{AUTH_DIR}/basic_auth.ini"},
            ],
            resources=resources("250m", "1Gi"),
            probes=http_probes("/health", PORT),
            config_volumes=[ConfigVolume("auth", AUTH_DIR, auth_volume), database.ca_volume],
            pod_annotations=database.pod_annotations(),
            replicas=replicas,
            # MLflow never calls the Kubernetes API; IRSA injects its own projected AWS token.
            pod_fields={"automount_service_account_token": False},
            # Its database role exists once the roles Job has run.
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(depends_on=[database.ready])
            ),
        )
        self.url = http_service(name, app=APP, namespace=namespace, public=public, opts=k8s_opts)
        self.register_outputs({"url": self.url})

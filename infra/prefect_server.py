"""A self-hosted Prefect server in the cluster (mlre:prefectServer): API, UI and scheduler.

`prefect server start` from the workers' image (mlre:prefectImage), so server and workers are one
Prefect version. Its state is its own `prefect` role and database on the RDS instance; clients
authenticate with a generated basic-auth string (`admin:<password>`) that only Secrets hold.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from infra import db_roles
from infra.config import PublicExposure
from infra.db_bootstrap import DatabaseAccess
from infra.k8s import (
    TMP,
    ClusterAccess,
    app_secret,
    hardened_deployment,
    http_probes,
    http_service,
    public_service,
    resources,
    secret_env,
    tokenless_service_account,
)
from infra.prefect_worker import AUTH_STRING_ENTRY, PrefectClient

APP = "prefect-server"
PORT = 4200  # Prefect's own default: `kubectl port-forward svc/prefect-server 4200` just works
PUBLIC_HOST = "prefect"  # published as prefect.<mlre:publicDomain>
UID = 1001  # the same non-root user as the workers, from the same image
ADMIN_USER = "admin"
AUTH_KEY = "PREFECT_SERVER_API_AUTH_STRING"  # the server's setting and its Secret key
DATABASE_KEY = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
HOME = f"{TMP}/prefect"  # PREFECT_HOME on the emptyDir: the root filesystem is read-only
# What the UI in a browser calls when the UI is not published: the port-forward above.
PORT_FORWARD_API_URL = f"http://localhost:{PORT}/api"


def server_args() -> list[str]:
    """`prefect server start` on all interfaces, with its background services (scheduler,
    late runs, automations) in the same process."""
    return ["prefect", "server", "start", "--host", "0.0.0.0", "--port", str(PORT)]


def ui_api_url(public: PublicExposure | None) -> str:
    """The API URL the UI's JavaScript calls from the browser (not the in-cluster one)."""
    if public is None:
        return PORT_FORWARD_API_URL
    return f"https://{public.hostname(PUBLIC_HOST)}/api"


def tls_env() -> list[dict[str, str]]:
    """verify-full for asyncpg, through Prefect's settings: the RDS CA bundle, a certificate
    required and its host name checked (db_roles.service_url leaves TLS out of the URL)."""
    prefix = "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS"
    return [
        {"name": f"{prefix}_ENABLED", "value": "true"},
        {"name": f"{prefix}_CA_FILE", "value": db_roles.RDS_CA_PATH},
        {"name": f"{prefix}_CHECK_HOSTNAME", "value": "true"},
    ]


def server_env(secret_name: pulumi.Input[str], public: PublicExposure | None) -> list[dict]:
    """Credentials only as secretKeyRefs; every writable path under the emptyDir; no telemetry
    (the namespace denies egress to the internet anyway)."""
    plain = {
        "PREFECT_HOME": HOME,
        "PREFECT_SERVER_UI_STATIC_DIRECTORY": f"{HOME}/ui",  # the UI bundle is copied there
        "PREFECT_SERVER_UI_API_URL": ui_api_url(public),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return [
        secret_env(DATABASE_KEY, secret_name),
        secret_env(AUTH_KEY, secret_name),
        *({"name": k, "value": v} for k, v in plain.items()),
        *tls_env(),
    ]


def auth_string(password: str) -> str:
    """Prefect's basic-auth string, `user:password`."""
    return f"{ADMIN_USER}:{password}"


class PrefectServer(pulumi.ComponentResource):
    """Auth password, Secret, ServiceAccount, Deployment, ClusterIP Service (and, when services
    are published, an HTTPS load balancer) of the Prefect server. `client` is what workers,
    flow runs and the alert relay use to reach it."""

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        image: str,
        database: DatabaseAccess,  # the `prefect` role (asyncpg) and the RDS CA volume
        public: PublicExposure | None,
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:PrefectServer", name, None, opts)
        k8s_opts = access.child_opts(self)
        password = random.RandomPassword(
            f"{name}-auth-password",
            length=32,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        auth = pulumi.Output.secret(password.result.apply(auth_string))
        self.secret_name = app_secret(
            name,
            app=APP,
            namespace=namespace,
            string_data={DATABASE_KEY: database.url, AUTH_KEY: auth},
            opts=k8s_opts,
        )
        # The server never calls the Kubernetes API.
        tokenless_service_account(name, app=APP, namespace=namespace, opts=k8s_opts)
        # Always private: workers and flow runs reach the API in-cluster, published or not.
        in_cluster = http_service(name, app=APP, namespace=namespace, port=PORT, opts=k8s_opts)
        self.client = PrefectClient(
            url=in_cluster.apply(lambda url: f"{url}/api"),
            credential_env=AUTH_STRING_ENTRY,
            credential=auth,
        )
        hardened_deployment(
            f"{name}-deployment",
            app=APP,
            namespace=namespace,
            uid=UID,
            image=image,
            args=server_args(),
            port=PORT,
            env=server_env(self.secret_name, public),
            resources=resources("250m", "1Gi"),
            # Database migrations run at start: a first start on a fresh database takes a while.
            probes=http_probes("/api/health", PORT, startup_seconds=300),
            config_volumes=[database.ca_volume],
            tmp_size_limit="512Mi",
            # Rolls when its database password or its auth string rotates.
            pod_annotations={**database.pod_annotations(), **self.client.pod_annotations()},
            replicas=1,
            # One process runs the scheduler and the other loop services, and migrates the
            # database at start: never two at once, even during a rollout.
            strategy={"type": "Recreate"},
            pod_fields={"automount_service_account_token": False},
            # Its database role exists once the roles Job has run.
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(depends_on=[database.ready])
            ),
        )
        self.ui_url: pulumi.Output[str] = (
            public_service(
                f"{name}-public",
                app=APP,
                namespace=namespace,
                public=public,
                host=PUBLIC_HOST,
                service_name=f"{APP}-public",
                opts=k8s_opts,
            )
            if public is not None
            else in_cluster
        )
        # How to log in (the UI asks for the whole `user:password` string): where, never what.
        self.login: pulumi.Output[dict[str, str]] = self.secret_name.apply(
            lambda secret: {"namespace": namespace, "secret": secret, "key": AUTH_KEY}
        )
        self.register_outputs({"api_url": self.client.url, "ui_url": self.ui_url})

    def outputs(self) -> dict[str, pulumi.Output]:
        """Stack outputs: the UI's URL and where its login is (secret name and key, no value)."""
        return {"prefect_ui_url": self.ui_url, "prefect_login": self.login}

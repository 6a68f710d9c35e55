"""Alert relay (`python -m relay`): Alertmanager's page and ticket alerts become Prefect events.

It runs next to Alertmanager, in the monitoring namespace, so one Secret holds the bearer token
both sides read: the relay as `MLRE_RELAY_TOKEN`, Alertmanager as a mounted file.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from infra.k8s import (
    TMP,
    ClusterAccess,
    ScrapeTarget,
    app_labels,
    app_secret,
    hardened_deployment,
    http_probes,
    http_service,
    resources,
    secret_env,
    tokenless_service_account,
)
from infra.monitoring import RelayReceiver
from infra.prefect_worker import PrefectClient
from infra.serving_service import UID  # the same image (mlre:servingImage), the same user

APP = "alert-relay"
PORT = 9096  # MLRE_RELAY_PORT; set explicitly below so the image default cannot drift
TOKEN_KEY = "MLRE_RELAY_TOKEN"  # the Secret's key: the env var and Alertmanager's file name
# MLRE_HOME on the /tmp emptyDir. The ledger (MLRE_HOME/relay/ledger.sqlite) lives there: a
# restart forgets it, and Prefect's own check of seen event ids then covers the re-deliveries.
HOME = f"{TMP}/mlre"


class AlertRelay(pulumi.ComponentResource):
    """Token Secret, ServiceAccount, Deployment and ClusterIP Service of the alert relay."""

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        image: str,
        prefect: PrefectClient,
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:AlertRelay", name, None, opts)
        k8s_opts = access.child_opts(self)
        self.token = random.RandomPassword(
            f"{name}-token", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        secret_name = app_secret(
            name,
            app=APP,
            namespace=namespace,
            # The workers' Prefect credential too, under its env var's name (PREFECT_API_KEY or
            # PREFECT_API_AUTH_STRING; mlre.relay_config reads either): it posts events as they do.
            string_data={TOKEN_KEY: self.token.result, prefect.credential_env: prefect.credential},
            opts=k8s_opts,
        )
        # The relay never calls the Kubernetes API.
        tokenless_service_account(name, app=APP, namespace=namespace, opts=k8s_opts)
        env = {
            "MLRE_HOST": "0.0.0.0",  # settings.host defaults to 127.0.0.1: unreachable in a pod
            "MLRE_RELAY_PORT": str(PORT),
            "MLRE_HOME": HOME,
        }
        hardened_deployment(
            f"{name}-deployment",
            app=APP,
            namespace=namespace,
            uid=UID,
            image=image,
            command=["python", "-m", "relay"],
            port=PORT,
            env=[
                *({"name": k, "value": v} for k, v in env.items()),
                {"name": "MLRE_RELAY_PREFECT_API_URL", "value": prefect.url},
                secret_env(TOKEN_KEY, secret_name),
                secret_env(prefect.credential_env, secret_name),
            ],
            pod_annotations=prefect.pod_annotations(),
            resources=resources("50m", "256Mi"),
            probes=http_probes("/healthz", PORT, startup_seconds=60),
            tmp_size_limit="256Mi",
            replicas=1,
            pod_fields={"automount_service_account_token": False},
            opts=k8s_opts,
        )
        self.url = http_service(name, app=APP, namespace=namespace, port=PORT, opts=k8s_opts)
        # What the monitoring component's ServiceMonitor selects: http_service's labels and port.
        self.metrics = ScrapeTarget(
            name=APP, namespace=namespace, labels=app_labels(APP), port="http"
        )
        # What Alertmanager needs: the webhook and the token's Secret (an Output: waits for it).
        webhook = self.url.apply(lambda url: f"{url}/alerts")
        self.receiver: pulumi.Output[RelayReceiver] = pulumi.Output.all(webhook, secret_name).apply(
            lambda a: RelayReceiver(url=a[0], token_secret=a[1], token_key=TOKEN_KEY)
        )
        self.register_outputs({"url": self.url})

"""Online prediction service (`python -m serving`): Feast online reads, MLflow models, HPA."""

from __future__ import annotations

import math

import pulumi
import pulumi_kubernetes as k8s

from infra import iam
from infra.config import cpu_cores
from infra.db_bootstrap import DatabaseAccess
from infra.feast_service import FeatureStoreAccess
from infra.k8s import (
    ClusterAccess,
    ScrapeTarget,
    app_labels,
    app_secret,
    cpu_autoscaler,
    hardened_deployment,
    http_service,
    irsa_service_account,
    resources,
)
from infra.mlflow_user import MlflowAdmin, MlflowUser
from mlre.k8s_labels import SERVING_SCRAPE_JOB

APP = "serving"
PORT = 8000  # MLRE_SERVING_PORT; set explicitly below so the image default cannot drift
UID = 10001  # the flows image's USER (Dockerfile)
# MLRE_HOME: on the writable emptyDir (the root filesystem is read-only): downloaded models, temp
# files, and with several workers the Prometheus multiprocess directory `python -m serving`
# creates for them (`<MLRE_HOME>/run/serving-metrics-<pid>`).
HOME = "/tmp/mlre"
# Key prefix of the prediction log in its bucket: mlre.prediction_log.predictions_dir writes
# `<MLRE_PREDICTION_LOG_URI>/predictions/<model>/part-*.parquet`; the role may write there and
# nowhere else.
PREDICTION_PREFIX = "predictions"
MLFLOW_USER = "serving"  # a non-admin MLflow user (MlflowUser): reads models, changes none
GRACE_S = 45  # uvicorn drains for 30 s (serving/__main__.py), plus the preStop pause
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(PORT),
    "prometheus.io/path": "/metrics",
}


def prediction_log_uri(bucket_arn: str, region: str) -> str:
    """MLRE_PREDICTION_LOG_URI for a bucket: the region is given, so pyarrow never looks it up."""
    return f"s3://{bucket_arn.rsplit(':', maxsplit=1)[-1]}?region={region}"


def serving_policy(
    readable_bucket_arns: list[str], prediction_log_bucket_arn: str, kms_key_arn: str
) -> str:
    """Read the feature lake and registry, write only under the prediction-log prefix."""
    return iam.document(
        [
            iam.statement(["s3:GetBucketLocation", "s3:ListBucket"], readable_bucket_arns),
            iam.statement(
                ["s3:GetObject", "s3:GetObjectVersion"],
                [f"{arn}/*" for arn in readable_bucket_arns],
            ),
            iam.statement(
                ["s3:PutObject", "s3:AbortMultipartUpload"],
                [f"{prediction_log_bucket_arn}/{PREDICTION_PREFIX}/*"],
            ),
            iam.statement(["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"], [kms_key_arn]),
        ]
    )


def serving_workers(cpu_request: str) -> int:
    """MLRE_SERVING_WORKERS for a pod's CPU request: one worker process per whole core, at least
    one (a worker is single-threaded where it matters: the event loop and the GIL)."""
    return max(1, math.floor(cpu_cores(cpu_request, "servingCpuRequest")))


def serving_probes() -> dict:
    """Startup/liveness on /healthz (process up); readiness on /readyz (registry read once;
    no champion yet or a store outage is reported as degraded, not unready: the fallback
    answers, and a fresh stack's rollout must complete before any model exists)."""

    def get(path: str) -> dict:
        return {"path": path, "port": "http"}

    return {
        "startup_probe": {
            "http_get": get("/healthz"),
            "period_seconds": 5,
            "failure_threshold": 24,  # two minutes for imports and the first model load
        },
        "readiness_probe": {
            "http_get": get("/readyz"),
            "period_seconds": 10,
            "timeout_seconds": 3,
            "failure_threshold": 3,
        },
        "liveness_probe": {
            "http_get": get("/healthz"),
            "period_seconds": 20,
            "timeout_seconds": 3,
            "failure_threshold": 3,
        },
    }


class ServingService(pulumi.ComponentResource):
    """IRSA ServiceAccount, Secret, Deployment, Service, HPA and PDB of the prediction service."""

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        image: str,
        min_replicas: int,
        max_replicas: int,
        cpu_target: int,
        cpu_request: str,
        memory: str,
        store: FeatureStoreAccess,
        registry: DatabaseAccess,  # the `feast_reader` role: SELECT on the registry only
        mlflow_uri: pulumi.Input[str],
        mlflow_admin: MlflowAdmin,
        prediction_log_bucket_arn: pulumi.Input[str],
        kms_key_arn: pulumi.Input[str],
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:ServingService", name, None, opts)
        k8s_opts = access.child_opts(self)
        policy = pulumi.Output.all(
            prediction_log_bucket_arn, kms_key_arn, *store.readable_bucket_arns
        )
        self.role = irsa_service_account(
            name,
            access,
            service_account=APP,
            namespace=namespace,
            policy=policy.apply(lambda a: serving_policy(a[2:], a[0], a[1])),
            parent=self,
        )
        # The service's own MLflow user; the admin password never reaches this component's pods.
        mlflow_user = MlflowUser(
            f"{name}-mlflow-user",
            username=MLFLOW_USER,
            namespace=namespace,
            admin=mlflow_admin,
            access=access,
            opts=pulumi.ResourceOptions(parent=self),
        )
        secret_name = app_secret(
            name,
            app=APP,
            namespace=namespace,
            string_data={
                "MLRE_REGISTRY_URI": registry.url,
                "MLRE_REDIS_CONNECTION_STRING": store.redis_connection,
                "MLFLOW_TRACKING_PASSWORD": mlflow_user.password,
            },
            opts=k8s_opts,
        )
        labels = app_labels(APP)
        # Where every replica writes its prediction log, and the flows read it (stack output).
        self.prediction_log_uri: pulumi.Output[str] = pulumi.Output.from_input(
            prediction_log_bucket_arn
        ).apply(lambda arn: prediction_log_uri(arn, store.region))
        env = {
            "MLRE_HOST": "0.0.0.0",  # settings.host defaults to 127.0.0.1: unreachable in a pod
            "MLRE_SERVING_PORT": str(PORT),
            "MLRE_SERVING_WORKERS": str(serving_workers(cpu_request)),
            "MLRE_HOME": HOME,
            "MLRE_STORE_PROFILE": "production",
            "MLRE_MLFLOW_URI": mlflow_uri,
            "MLRE_OFFLINE_URI": pulumi.Output.concat("s3://", store.lake_bucket),
            "MLRE_PREDICTION_LOG_URI": self.prediction_log_uri,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
            "AWS_REGION": store.region,
        }
        hardened_deployment(
            f"{name}-deployment",
            app=APP,
            namespace=namespace,
            uid=UID,
            image=image,
            command=["python", "-m", "serving"],
            port=PORT,
            env_from_secret=secret_name,
            env=[{"name": k, "value": v} for k, v in env.items()],
            resources=resources(cpu_request, memory),
            probes=serving_probes(),
            tmp_size_limit="2Gi",
            config_volumes=[registry.ca_volume],
            # Endpoints drop the pod before uvicorn stops accepting requests.
            lifecycle={"pre_stop": {"sleep": {"seconds": 5}}},
            # No fixed replicas: the HPA owns the count. Surge, never drop below the count.
            strategy={
                "type": "RollingUpdate",
                "rolling_update": {"max_surge": 1, "max_unavailable": 0},
            },
            pod_annotations={**SCRAPE_ANNOTATIONS, **registry.pod_annotations()},
            pod_fields={
                # IRSA injects its own projected token; the app never calls the API.
                "automount_service_account_token": False,
                "termination_grace_period_seconds": GRACE_S,
                "topology_spread_constraints": [
                    {
                        "max_skew": 1,
                        "topology_key": "topology.kubernetes.io/zone",
                        "when_unsatisfiable": "ScheduleAnyway",
                        "label_selector": {"match_labels": labels},
                    }
                ],
            },
            # Pods start once the Jobs have created (or re-keyed) their MLflow user and their
            # database role.
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(depends_on=[mlflow_user.job, registry.ready])
            ),
        )
        # Never public: the service has no authentication of its own (clients call it in-cluster,
        # or through an authenticating ingress the team adds).
        self.url = http_service(name, app=APP, namespace=namespace, opts=k8s_opts)
        # What the monitoring component's ServiceMonitor selects: http_service's labels and port.
        # Same job name as the local Prometheus's scrape: one set of SLO rules for both.
        self.metrics = ScrapeTarget(
            name=APP, namespace=namespace, labels=labels, port="http", job=SERVING_SCRAPE_JOB
        )
        cpu_autoscaler(
            name,
            app=APP,
            namespace=namespace,
            labels=labels,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            cpu_target=cpu_target,
            opts=k8s_opts,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": APP, "namespace": namespace, "labels": labels},
            spec={
                "min_available": 1,
                "selector": {"match_labels": labels},
                # A pod that never got ready (no champion yet) must not block a drain.
                "unhealthy_pod_eviction_policy": "AlwaysAllow",
            },
            opts=k8s_opts,
        )
        self.register_outputs(
            {
                "url": self.url,
                "role_arn": self.role.arn,
                "prediction_log_uri": self.prediction_log_uri,
            }
        )

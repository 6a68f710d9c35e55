"""Online prediction service (`python -m serving`): Feast online reads, MLflow models, HPA."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra import iam
from infra.k8s import (
    cpu_pool_selector,
    http_service,
    irsa_service_account,
    pod_security_context,
    resources,
    restricted_security_context,
)

APP = "serving"
PORT = 8000  # MLRE_SERVING_PORT; set explicitly below so the image default cannot drift
UID = 10001  # the flows image's USER (Dockerfile)
HOME = "/tmp/mlre"  # MLRE_HOME: the emptyDir; downloaded models and temp files only
# Key prefix of the prediction log in its bucket: mlre.inference.predictions_dir writes
# `<MLRE_PREDICTION_LOG_URI>/predictions/<model>/part-*.parquet`; the role may write there and
# nowhere else.
PREDICTION_PREFIX = "predictions"
MLFLOW_USER = "admin"  # the only user basic-auth creates; see README "Known limits"
GRACE_S = 45  # uvicorn drains for 30 s (serving/__main__.py), plus the preStop pause
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(PORT),
    "prometheus.io/path": "/metrics",
}


def in_cluster_url(service: str, namespace: str) -> str:
    """URL of a port-80 ClusterIP Service from inside the cluster."""
    return f"http://{service}.{namespace}.svc.cluster.local"


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
        public: bool,
        region: str,
        mlflow_uri: pulumi.Input[str],
        mlflow_password: pulumi.Input[str],
        lake_bucket: pulumi.Input[str],
        readable_bucket_arns: list[pulumi.Input[str]],
        prediction_log_bucket_arn: pulumi.Input[str],
        kms_key_arn: pulumi.Input[str],
        registry_url: pulumi.Input[str],
        redis_connection: pulumi.Input[str],
        oidc_provider_arn: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:ServingService", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        policy = pulumi.Output.all(prediction_log_bucket_arn, kms_key_arn, *readable_bucket_arns)
        self.role = irsa_service_account(
            name,
            service_account=APP,
            namespace=namespace,
            policy=policy.apply(lambda a: serving_policy(a[2:], a[0], a[1])),
            oidc_provider_arn=oidc_provider_arn,
            oidc_issuer_url=oidc_issuer_url,
            parent=self,
            provider=provider,
        )
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata={"name": f"{APP}-secrets", "namespace": namespace},
            string_data={
                "MLRE_REGISTRY_URI": registry_url,
                "MLRE_REDIS_CONNECTION_STRING": redis_connection,
                "MLFLOW_TRACKING_PASSWORD": mlflow_password,
            },
            opts=k8s_opts,
        )
        labels = {"app.kubernetes.io/name": APP}
        # Where every replica writes its prediction log, and the flows read it (stack output).
        self.prediction_log_uri: pulumi.Output[str] = pulumi.Output.from_input(
            prediction_log_bucket_arn
        ).apply(lambda arn: prediction_log_uri(arn, region))
        secret_name = secret.metadata.apply(lambda m: m["name"])
        env = {
            "MLRE_HOST": "0.0.0.0",  # settings.host defaults to 127.0.0.1: unreachable in a pod
            "MLRE_SERVING_PORT": str(PORT),
            "MLRE_HOME": HOME,
            "MLRE_STORE_PROFILE": "production",
            "MLRE_MLFLOW_URI": mlflow_uri,
            "MLRE_OFFLINE_URI": pulumi.Output.concat("s3://", lake_bucket),
            "MLRE_PREDICTION_LOG_URI": self.prediction_log_uri,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
            "AWS_REGION": region,
            "HOME": "/tmp",
        }
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={"name": APP, "namespace": namespace, "labels": labels},
            spec={
                # No fixed replicas: the HPA owns the count. Surge, never drop below the count.
                "selector": {"match_labels": labels},
                "strategy": {
                    "type": "RollingUpdate",
                    "rolling_update": {"max_surge": 1, "max_unavailable": 0},
                },
                "template": {
                    "metadata": {"labels": labels, "annotations": SCRAPE_ANNOTATIONS},
                    "spec": {
                        "service_account_name": APP,
                        # IRSA injects its own projected token; the app never calls the API.
                        "automount_service_account_token": False,
                        "node_selector": cpu_pool_selector(),
                        "security_context": pod_security_context(UID),
                        "termination_grace_period_seconds": GRACE_S,
                        "topology_spread_constraints": [
                            {
                                "max_skew": 1,
                                "topology_key": "topology.kubernetes.io/zone",
                                "when_unsatisfiable": "ScheduleAnyway",
                                "label_selector": {"match_labels": labels},
                            }
                        ],
                        "containers": [
                            {
                                "name": APP,
                                "image": image,
                                "command": ["python", "-m", "serving"],
                                "ports": [{"name": "http", "container_port": PORT}],
                                "env_from": [{"secret_ref": {"name": secret_name}}],
                                "env": [{"name": k, "value": v} for k, v in env.items()],
                                "resources": resources(cpu_request, memory),
                                "security_context": restricted_security_context(),
                                "volume_mounts": [{"name": "tmp", "mount_path": "/tmp"}],
                                # Endpoints drop the pod before uvicorn stops accepting requests.
                                "lifecycle": {"pre_stop": {"sleep": {"seconds": 5}}},
                                **serving_probes(),
                            }
                        ],
                        "volumes": [{"name": "tmp", "empty_dir": {"size_limit": "2Gi"}}],
                    },
                },
            },
            opts=k8s_opts,
        )
        service = http_service(
            name, app=APP, namespace=namespace, labels=labels, public=public, opts=k8s_opts
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata={"name": APP, "namespace": namespace, "labels": labels},
            spec={
                "scale_target_ref": {"api_version": "apps/v1", "kind": "Deployment", "name": APP},
                "min_replicas": min_replicas,
                "max_replicas": max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "average_utilization": cpu_target},
                        },
                    }
                ],
            },
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
        self.url: pulumi.Output[str] = pulumi.Output.from_input(in_cluster_url(APP, namespace))
        if public:
            self.url = service.status.apply(
                lambda s: f"http://{s.load_balancer.ingress[0].hostname}"
            )
        self.register_outputs(
            {
                "url": self.url,
                "role_arn": self.role.arn,
                "prediction_log_uri": self.prediction_log_uri,
            }
        )

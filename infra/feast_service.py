"""Feast feature server: Redis online store, SQL registry on RDS, file offline store on S3."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import iam
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
    )


@dataclass(frozen=True)
class FeatureStoreAccess:
    """How a pod reaches the feature store: SQL registry, Redis online store, S3 offline lake."""

    region: str
    lake_bucket: pulumi.Input[str]
    readable_bucket_arns: list[pulumi.Input[str]]  # the lake and registry buckets, read-only
    registry_url: pulumi.Input[str]
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
        public: bool,
        store: FeatureStoreAccess,
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
                "FEAST_REGISTRY_URL": store.registry_url,
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
            config_volumes=[ConfigVolume("config", CONFIG_DIR, config_volume)],
            # No fixed replicas: the HPA owns the count.
            opts=k8s_opts,
        )
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

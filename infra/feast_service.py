"""Feast feature server: Redis online store, SQL registry on RDS, file offline store on S3."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

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
        region: str,
        lake_bucket: pulumi.Input[str],
        readable_bucket_arns: list[pulumi.Input[str]],
        kms_key_arn: pulumi.Input[str],
        registry_url: pulumi.Input[str],
        redis_connection: pulumi.Input[str],
        oidc_provider_arn: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:FeastService", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        policy = pulumi.Output.all(kms_key_arn, *readable_bucket_arns).apply(
            lambda a: iam.document(iam.s3_access_statements(a[1:], a[0], write=False))
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
        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata={"name": f"{APP}-config", "namespace": namespace},
            data={
                "feature_store.yaml": pulumi.Output.from_input(lake_bucket).apply(
                    lambda b: feature_store_yaml(project, b)
                )
            },
            opts=k8s_opts,
        )
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata={"name": f"{APP}-secrets", "namespace": namespace},
            string_data={
                "FEAST_REGISTRY_URL": registry_url,
                "FEAST_REDIS_CONNECTION": redis_connection,
            },
            opts=k8s_opts,
        )
        labels = {"app.kubernetes.io/name": APP}
        secret_name = secret.metadata.apply(lambda m: m["name"])
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={"name": APP, "namespace": namespace, "labels": labels},
            spec={
                # No fixed replicas: the HPA owns the count.
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
                                "args": [
                                    "feast",
                                    f"--chdir={CONFIG_DIR}",
                                    "serve",
                                    "--host=0.0.0.0",
                                    f"--port={PORT}",
                                ],
                                "ports": [{"name": "http", "container_port": PORT}],
                                "env_from": [{"secret_ref": {"name": secret_name}}],
                                "env": [
                                    {"name": "AWS_REGION", "value": region},
                                    {"name": "HOME", "value": "/tmp"},
                                ],
                                "resources": resources("250m", "1Gi"),
                                "security_context": restricted_security_context(),
                                "volume_mounts": [
                                    {"name": "tmp", "mount_path": "/tmp"},
                                    {"name": "config", "mount_path": CONFIG_DIR, "read_only": True},
                                ],
                                **http_probes("/health", PORT),
                            }
                        ],
                        "volumes": [
                            {"name": "tmp", "empty_dir": {}},
                            {
                                "name": "config",
                                "config_map": {"name": config.metadata.apply(lambda m: m["name"])},
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
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata={"name": APP, "namespace": namespace},
            spec={
                "scale_target_ref": {"api_version": "apps/v1", "kind": "Deployment", "name": APP},
                "min_replicas": min_replicas,
                "max_replicas": max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "average_utilization": 70},
                        },
                    }
                ],
            },
            opts=k8s_opts,
        )
        self.url = pulumi.Output.concat("http://", APP, ".", namespace, ".svc.cluster.local")
        if public:
            self.url = service.status.apply(
                lambda s: f"http://{s.load_balancer.ingress[0].hostname}"
            )
        self.register_outputs({"url": self.url})

"""Small builders for hardened Kubernetes objects shared by the platform services."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam
from infra.config import PublicExposure
from mlre import k8s_labels

IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
APP_LABEL = "app.kubernetes.io/name"
TMP = "/tmp"  # the only writable path in a pod: an emptyDir under a read-only root FS


@dataclass(frozen=True)
class ClusterAccess:
    """What a component on the cluster needs of it: the API provider and IRSA's OIDC issuer."""

    provider: k8s.Provider
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer_url: pulumi.Input[str]

    def child_opts(self, parent: pulumi.Resource) -> pulumi.ResourceOptions:
        """Options of a Kubernetes object that `parent` owns."""
        return pulumi.ResourceOptions(parent=parent, provider=self.provider)

    def irsa_role(
        self,
        name: str,
        *,
        namespace: str,
        service_account: str,
        policy: pulumi.Input[str],
        parent: pulumi.Resource,
    ) -> aws.iam.Role:
        """IAM role that only `namespace/service_account` of this cluster may assume."""
        return iam.irsa_role(
            name,
            oidc_provider_arn=self.oidc_provider_arn,
            oidc_issuer_url=self.oidc_issuer_url,
            namespace=namespace,
            service_account=service_account,
            policy=policy,
            parent=parent,
        )


@dataclass(frozen=True)
class ScrapeTarget:
    """A Service Prometheus scrapes: where it is, the labels that select it, its port's name."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    port: str
    path: str = "/metrics"
    node_label: bool = False  # add the scraped pod's node as label `node`
    job: str | None = None  # the `job` label its series carry (the SLO rules select on it)


@dataclass(frozen=True)
class ConfigVolume:
    """A Secret or ConfigMap volume, mounted read-only at one path."""

    name: str
    mount_path: str
    source: Mapping[str, Any]  # {"secret": {...}} or {"config_map": {...}}


def _given(**fields: object) -> dict[str, object]:
    """The fields that were given: an absent key, not a null, is what the API expects."""
    return {key: value for key, value in fields.items() if value is not None}


def app_labels(app: str) -> dict[str, str]:
    """The one label a component's objects carry and its selectors match."""
    return {APP_LABEL: app}


def in_cluster_url(service: str, namespace: str, port: int = 80) -> str:
    """URL of a ClusterIP Service from inside the cluster (no port in it when it is 80)."""
    host = f"http://{service}.{namespace}.svc.cluster.local"
    return host if port == 80 else f"{host}:{port}"


def secret_env(key: str, secret_name: pulumi.Input[str]) -> dict:
    """Env var `key` read from the Secret's key of the same name (never a plain value)."""
    return {"name": key, "value_from": {"secret_key_ref": {"name": secret_name, "key": key}}}


def restricted_security_context() -> dict:
    """Container securityContext meeting the Pod Security 'restricted' profile."""
    return {
        "run_as_non_root": True,
        "allow_privilege_escalation": False,
        "read_only_root_filesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def pod_security_context(uid: int) -> dict:
    """Pod securityContext: a fixed non-root uid/gid (images default to root)."""
    return {"run_as_non_root": True, "run_as_user": uid, "run_as_group": uid, "fs_group": uid}


def http_probes(path: str, port: int, *, startup_seconds: int = 120) -> dict:
    """Startup, readiness and liveness probes on one HTTP health path."""
    get = {"path": path, "port": port}
    return {
        "startup_probe": {
            "http_get": get,
            "period_seconds": 5,
            "failure_threshold": startup_seconds // 5,
        },
        "readiness_probe": {"http_get": get, "period_seconds": 10},
        "liveness_probe": {"http_get": get, "period_seconds": 20, "failure_threshold": 3},
    }


def resources(cpu: str, memory: str, cpu_limit: str | None = None) -> dict:
    """Requests equal to limits for memory (no OOM surprises), CPU limit optional."""
    limits = {"memory": memory}
    if cpu_limit:
        limits["cpu"] = cpu_limit
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def cpu_pool_selector() -> dict[str, str]:
    """nodeSelector keeping platform services off the (tainted, scale-to-zero) GPU nodes."""
    return {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}


def namespace(
    name: str, provider: k8s.Provider, parent: pulumi.Resource, level: str = "restricted"
) -> k8s.core.v1.Namespace:
    """Namespace enforcing a Pod Security Standard (flow jobs get 'baseline': user images)."""
    return k8s.core.v1.Namespace(
        name,
        metadata={
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
        opts=pulumi.ResourceOptions(parent=parent, provider=provider),
    )


def load_balancer_annotations(public: PublicExposure, app: str) -> dict[str, str]:
    """An internet-facing NLB (AWS Load Balancer Controller) that terminates TLS with the ACM
    certificate and forwards plain HTTP to the pods; external-dns may publish the name."""
    prefix = "service.beta.kubernetes.io/aws-load-balancer"
    return {
        f"{prefix}-type": "external",
        f"{prefix}-nlb-target-type": "ip",
        f"{prefix}-scheme": "internet-facing",
        f"{prefix}-ssl-cert": public.certificate_arn,
        f"{prefix}-ssl-ports": "https",
        f"{prefix}-backend-protocol": "tcp",
        "external-dns.alpha.kubernetes.io/hostname": public.hostname(app),
    }


def irsa_service_account(
    name: str,
    access: ClusterAccess,
    *,
    service_account: str,
    namespace: str,
    policy: pulumi.Input[str],
    parent: pulumi.Resource,
) -> aws.iam.Role:
    """An IRSA role with one inline policy (`<name>-irsa`) and the ServiceAccount (`<name>-sa`)
    annotated with it, so pods running as that account get exactly that policy."""
    role = access.irsa_role(
        f"{name}-irsa",
        namespace=namespace,
        service_account=service_account,
        policy=policy,
        parent=parent,
    )
    k8s.core.v1.ServiceAccount(
        f"{name}-sa",
        metadata={
            "name": service_account,
            "namespace": namespace,
            "annotations": {IRSA_ANNOTATION: role.arn},
        },
        opts=access.child_opts(parent),
    )
    return role


def tokenless_service_account(
    name: str, *, app: str, namespace: str, opts: pulumi.ResourceOptions
) -> k8s.core.v1.ServiceAccount:
    """The app's own ServiceAccount (`<name>-sa`), with no API token mounted: for pods that
    never call the Kubernetes API."""
    return k8s.core.v1.ServiceAccount(
        f"{name}-sa",
        metadata={"name": app, "namespace": namespace},
        automount_service_account_token=False,
        opts=opts,
    )


def http_service(
    name: str,
    *,
    app: str,
    namespace: str,
    opts: pulumi.ResourceOptions,
    public: PublicExposure | None = None,
    port: int = 80,
) -> pulumi.Output[str]:
    """`port` in front of the app's pods' named `http` port, ClusterIP; returns the URL clients
    use. With `public`, an HTTPS-only load balancer open to the configured CIDRs instead, and
    the app's public https:// URL."""
    labels = app_labels(app)
    if public is None:
        k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": app, "namespace": namespace, "labels": labels},
            spec={
                "type": "ClusterIP",
                "selector": labels,
                "ports": [{"name": "http", "port": port, "target_port": "http"}],
            },
            opts=opts,
        )
        return pulumi.Output.from_input(in_cluster_url(app, namespace, port))
    return public_service(name, app=app, namespace=namespace, public=public, opts=opts)


def public_service(
    name: str,
    *,
    app: str,
    namespace: str,
    public: PublicExposure,
    opts: pulumi.ResourceOptions,
    host: str | None = None,
    service_name: str | None = None,
) -> pulumi.Output[str]:
    """An HTTPS-only load balancer (Service `service_name`, default `app`) in front of the app's
    pods' `http` port, open to the configured CIDRs; returns https://<host>.<domain> (host
    defaults to `app`)."""
    labels = app_labels(app)
    host = host or app
    k8s.core.v1.Service(
        f"{name}-service",
        metadata={
            "name": service_name or app,
            "namespace": namespace,
            "labels": labels,
            "annotations": load_balancer_annotations(public, host),
        },
        spec={
            "type": "LoadBalancer",
            "selector": labels,
            "ports": [{"name": "https", "port": 443, "target_port": "http"}],
            "load_balancer_source_ranges": list(public.source_cidrs),
        },
        opts=opts,
    )
    return pulumi.Output.from_input(f"https://{public.hostname(host)}")


def app_secret(
    name: str,
    *,
    app: str,
    namespace: str,
    string_data: Mapping[str, pulumi.Input[str]],
    opts: pulumi.ResourceOptions,
) -> pulumi.Output[str]:
    """The component's `<app>-secrets` Secret; returns its name as an Output so pods that
    reference it are created after it."""
    secret = k8s.core.v1.Secret(
        f"{name}-secret",
        metadata={"name": f"{app}-secrets", "namespace": namespace},
        string_data=dict(string_data),
        opts=opts,
    )
    return secret.metadata.apply(lambda m: m["name"])


def cpu_autoscaler(
    name: str,
    *,
    app: str,
    namespace: str,
    min_replicas: int,
    max_replicas: int,
    cpu_target: int,
    opts: pulumi.ResourceOptions,
    labels: dict[str, str] | None = None,
) -> k8s.autoscaling.v2.HorizontalPodAutoscaler:
    """autoscaling/v2 HPA on average CPU utilisation of the Deployment named `app`."""
    return k8s.autoscaling.v2.HorizontalPodAutoscaler(
        f"{name}-hpa",
        metadata=_given(name=app, namespace=namespace, labels=labels),
        spec={
            "scale_target_ref": {"api_version": "apps/v1", "kind": "Deployment", "name": app},
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
        opts=opts,
    )


def hardened_deployment(
    name: str,
    *,
    app: str,
    namespace: str,
    uid: int,
    image: str,
    port: int,
    resources: dict[str, Any],
    probes: dict[str, Any],
    opts: pulumi.ResourceOptions,
    labels: dict[str, str] | None = None,
    service_account: str | None = None,
    container_name: str | None = None,
    port_name: str = "http",
    args: pulumi.Input[Sequence[str]] | None = None,
    command: Sequence[str] | None = None,
    env: Sequence[dict] = (),
    env_from_secret: pulumi.Input[str] | None = None,
    config_volumes: Sequence[ConfigVolume] = (),
    tmp_size_limit: str | None = None,
    lifecycle: dict | None = None,
    replicas: int | None = None,
    strategy: dict | None = None,
    pod_annotations: Mapping[str, pulumi.Input[str]] | None = None,
    pod_fields: Mapping[str, object] | None = None,
) -> k8s.apps.v1.Deployment:
    """One-container Deployment under the restricted profile on the CPU pool."""
    labels = labels or app_labels(app)
    container = _given(
        name=container_name or app,
        image=image,
        args=args,
        command=command,
        ports=[{"name": port_name, "container_port": port}],
        env_from=None if env_from_secret is None else [{"secret_ref": {"name": env_from_secret}}],
        # The root filesystem is read-only: HOME must point into the writable emptyDir.
        env=[*env, {"name": "HOME", "value": TMP}],
        resources=resources,
        security_context=restricted_security_context(),
        volume_mounts=[
            {"name": "tmp", "mount_path": TMP},
            *(
                {"name": v.name, "mount_path": v.mount_path, "read_only": True}
                for v in config_volumes
            ),
        ],
        lifecycle=lifecycle,
    )
    pod = {
        "service_account_name": service_account or app,
        "node_selector": cpu_pool_selector(),
        "security_context": pod_security_context(uid),
        **(pod_fields or {}),
        "containers": [{**container, **probes}],
        "volumes": [
            {"name": "tmp", "empty_dir": _given(size_limit=tmp_size_limit)},
            *({"name": v.name, **v.source} for v in config_volumes),
        ],
    }
    return k8s.apps.v1.Deployment(
        name,
        metadata={"name": app, "namespace": namespace, "labels": labels},
        spec=_given(
            replicas=replicas,  # None: an HPA owns the count
            selector={"match_labels": labels},
            strategy=strategy,
            template={
                "metadata": _given(labels=labels, annotations=pod_annotations),
                "spec": pod,
            },
        ),
        opts=opts,
    )


@dataclass(frozen=True)
class ScriptJob:
    """A one-shot Job that runs a script from a ConfigMap: what differs between such Jobs."""

    app: str
    uid: int
    image: str
    command: Sequence[str]
    env: Sequence[dict]
    script_config_map: pulumi.Input[str]
    script_dir: str
    memory: str
    backoff_limit: int
    deadline_s: int
    ttl_s: int = 3600  # a finished Job (and its log) stays an hour
    config_volumes: Sequence[ConfigVolume] = ()


def script_job_spec(job: ScriptJob, container_name: str) -> dict[str, object]:
    """JobSpec under the restricted profile on the CPU pool, no service-account token (these
    Jobs talk to one service, never to the Kubernetes API), the script mounted read-only."""
    container = {
        "name": container_name,
        "image": job.image,
        "command": list(job.command),
        "env": list(job.env),
        "resources": resources("50m", job.memory),
        "security_context": restricted_security_context(),
        "volume_mounts": [
            {"name": "script", "mount_path": job.script_dir, "read_only": True},
            *(
                {"name": v.name, "mount_path": v.mount_path, "read_only": True}
                for v in job.config_volumes
            ),
            {"name": "tmp", "mount_path": TMP},
        ],
    }
    return {
        "backoff_limit": job.backoff_limit,
        "active_deadline_seconds": job.deadline_s,
        "ttl_seconds_after_finished": job.ttl_s,
        "template": {
            "metadata": {"labels": app_labels(job.app)},
            "spec": {
                "restart_policy": "Never",
                "automount_service_account_token": False,
                "node_selector": cpu_pool_selector(),
                "security_context": pod_security_context(job.uid),
                "containers": [container],
                "volumes": [
                    {"name": "script", "config_map": {"name": job.script_config_map}},
                    *({"name": v.name, **v.source} for v in job.config_volumes),
                    {"name": "tmp", "empty_dir": {}},
                ],
            },
        },
    }

"""Small builders for hardened Kubernetes objects shared by the platform services."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam
from mlre import k8s_labels

IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"


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


def service_type(public: bool) -> str:
    """LoadBalancer only when a config flag says so; ClusterIP otherwise."""
    return "LoadBalancer" if public else "ClusterIP"


def irsa_service_account(
    name: str,
    *,
    service_account: str,
    namespace: str,
    policy: pulumi.Input[str],
    oidc_provider_arn: pulumi.Input[str],
    oidc_issuer_url: pulumi.Input[str],
    parent: pulumi.Resource,
    provider: k8s.Provider,
) -> aws.iam.Role:
    """An IRSA role with one inline policy (`<name>-irsa`) and the ServiceAccount (`<name>-sa`)
    annotated with it, so pods running as that account get exactly that policy."""
    role = iam.irsa_role(
        f"{name}-irsa",
        oidc_provider_arn=oidc_provider_arn,
        oidc_issuer_url=oidc_issuer_url,
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
        opts=pulumi.ResourceOptions(parent=parent, provider=provider),
    )
    return role


def http_service(
    name: str,
    *,
    app: str,
    namespace: str,
    labels: dict[str, str],
    public: bool,
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.Service:
    """Port 80 in front of the pods' named `http` port; ClusterIP unless `public`."""
    return k8s.core.v1.Service(
        f"{name}-service",
        metadata={"name": app, "namespace": namespace, "labels": labels},
        spec={
            "type": service_type(public),
            "selector": labels,
            "ports": [{"name": "http", "port": 80, "target_port": "http"}],
        },
        opts=opts,
    )

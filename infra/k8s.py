"""Small builders for hardened Kubernetes objects shared by the platform services."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

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

"""Dask on the cluster: the Dask Kubernetes operator and what flow runs need to scale out on it.

A flow run that scales out creates a DaskCluster (dask-kubernetes' `KubeCluster`) in the flows
namespace; the operator turns it into a scheduler Deployment + Service and worker Deployments
there, and removes them with the DaskCluster. The operator runs in a namespace of its own on the
CPU pool and acts on the flows namespace only (`kopf --namespace`): its RBAC is a Role there,
not the chart's ClusterRole (every pod, Service and Deployment of the cluster, verbs "*").
Without cluster-wide rights kopf logs that it cannot list namespaces or watch CRDs and uses the
one namespace it was given. The flows' service account may create and delete DaskClusters and
read the pods and Services `KubeCluster` waits for, in its own namespace only.

The worker pod defaults (image, size, count, service account, node pool) reach flow runs as
MLRE_* variables: the ConfigMap `flows-dask` in the flows namespace and the stack output
`dask_settings` (for a deployment's `job_variables.env`).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.config import DaskConfig
from infra.k8s import ClusterAccess, cpu_pool_selector, resources
from infra.monitoring import CONTAINER_SECURITY, pod_security
from mlre import k8s_labels

CHART_REPO = "https://helm.dask.org"
CHART = "dask-kubernetes-operator"
RELEASE = "dask-operator"
NAMESPACE = "mlre-dask-operator"
OPERATOR_SA = "dask-operator"
OPERATOR_UID = 1000  # the operator image's non-root user (the chart's runAsUser)
OPERATOR_SIZE = resources("50m", "256Mi")  # one kopf process; load grows with DaskClusters only
# The chart's selector labels for the operator pod: name = chart name, instance = release name.
OPERATOR_PODS = {"app.kubernetes.io/name": CHART, "app.kubernetes.io/instance": RELEASE}

CRD_GROUP = "kubernetes.dask.org"
# Labels the operator puts on the pods of every DaskCluster, and the scheduler's ports.
SCHEDULER_PODS = {"dask.org/component": "scheduler"}
WORKER_PODS = {"dask.org/component": "worker"}
SCHEDULER_PORT = 8786  # workers and clients (tcp-comm)
DASHBOARD_PORT = 8787  # HTTP API the operator asks which workers to retire (http-dashboard)

SETTINGS_CONFIG_MAP = k8s_labels.FLOWS_DASK_CONFIG_MAP
FLOWS_ROLE = "dask-clusters"
TASK_RUNNER = "dask-kubernetes"  # MLRE_TASK_RUNNER: a per-run DaskCluster via this operator

READ = ["get", "list", "watch"]
MANAGE = [*READ, "create", "patch", "delete"]
# What `KubeCluster` does in its namespace: create, scale (patch) and delete its DaskCluster,
# worker groups and autoscaler; wait for the scheduler pod and Service; read pod logs
# (`get_logs`, and the scheduler's log when it crash-loops). No Secrets, no pod exec or create.
FLOWS_RULES = [
    {
        "api_groups": [CRD_GROUP],
        "resources": ["daskclusters", "daskworkergroups", "daskautoscalers"],
        "verbs": MANAGE,
    },
    {"api_groups": [""], "resources": ["pods", "services"], "verbs": READ},
    {"api_groups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]
# The chart's own rules for the operator, in the flows namespace only and with named verbs
# instead of "*": the Dask resources it reconciles, the scheduler and worker Deployments, pods
# and Services it creates, and the events kopf posts about its handlers.
OPERATOR_RULES = [
    {
        "api_groups": [CRD_GROUP],
        "resources": [
            "daskclusters",
            "daskworkergroups",
            "daskworkergroups/scale",
            "daskjobs",
            "daskjobs/status",
            "daskautoscalers",
        ],
        "verbs": MANAGE,
    },
    {"api_groups": [""], "resources": ["pods", "pods/status", "services"], "verbs": MANAGE},
    {"api_groups": ["apps"], "resources": ["deployments"], "verbs": MANAGE},
    {"api_groups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]


def worker_settings(cfg: DaskConfig, image: str) -> dict[str, str]:
    """MLRE_* variables telling a flow run how to start its Dask workers on this cluster."""
    return {
        "MLRE_TASK_RUNNER": TASK_RUNNER,
        "MLRE_DASK_IMAGE": image,
        "MLRE_DASK_WORKERS": str(cfg.max_workers),
        "MLRE_DASK_WORKER_CPU": f"{cfg.worker_cpu:g}",  # cores: "1", "0.5"
        "MLRE_DASK_WORKER_MEMORY_MB": str(cfg.worker_memory_mb),
        "MLRE_DASK_NAMESPACE": k8s_labels.FLOWS_NAMESPACE,
        "MLRE_DASK_SERVICE_ACCOUNT": k8s_labels.FLOWS_SERVICE_ACCOUNT,
        # The `mlre.io/pool` value; "gpu" means the GPU pool's toleration and a GPU per worker.
        "MLRE_DASK_WORKER_POOL": cfg.worker_pool,
    }


def operator_values(watched_namespace: str) -> dict[str, Any]:
    """Chart values: one operator on the CPU pool, hardened, sized, watching one namespace; no
    chart RBAC (ours is namespaced), a service account of a fixed name for our bindings."""
    return {
        "serviceAccount": {"create": True, "name": OPERATOR_SA},
        "rbac": {"create": False},
        "nodeSelector": cpu_pool_selector(),
        "resources": OPERATOR_SIZE,
        "podSecurityContext": pod_security(OPERATOR_UID),
        "securityContext": {**CONTAINER_SECURITY, "runAsNonRoot": True},
        # One replica (Recreate): no peering objects needed; only the flows namespace.
        "kopfArgs": ["--standalone", f"--namespace={watched_namespace}"],
    }


def _subject(service_account: str, namespace: str) -> dict[str, str]:
    """A RoleBinding subject: one service account."""
    return {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}


class DaskOperator(pulumi.ComponentResource):
    """The operator (Helm), its namespaced RBAC, the flows' right to run DaskClusters, and the
    worker defaults flow runs read."""

    def __init__(
        self,
        name: str,
        cfg: DaskConfig,
        *,
        image: str,
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:DaskOperator", name, None, opts)
        flows = k8s_labels.FLOWS_NAMESPACE
        k8s_opts = access.child_opts(self)
        rbac = [
            *self._role(
                f"{name}-operator",
                OPERATOR_SA,
                OPERATOR_RULES,
                _subject(OPERATOR_SA, NAMESPACE),
                k8s_opts,
            ),
            *self._role(
                f"{name}-flows",
                FLOWS_ROLE,
                FLOWS_RULES,
                _subject(k8s_labels.FLOWS_SERVICE_ACCOUNT, flows),
                k8s_opts,
            ),
        ]
        k8s.helm.v3.Release(
            f"{name}-release",
            name=RELEASE,
            chart=CHART,
            version=cfg.operator_chart_version,
            repository_opts={"repo": CHART_REPO},
            namespace=NAMESPACE,
            values=operator_values(flows),
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=rbac)),
        )
        self.settings = worker_settings(cfg, image)
        k8s.core.v1.ConfigMap(
            f"{name}-settings",
            metadata={"name": SETTINGS_CONFIG_MAP, "namespace": flows},
            data=self.settings,
            opts=k8s_opts,
        )
        self.register_outputs({"settings": self.settings})

    def _role(
        self,
        name: str,
        role: str,
        rules: list[dict[str, Any]],
        subject: dict[str, str],
        opts: pulumi.ResourceOptions,
    ) -> list[pulumi.Resource]:
        """A Role in the flows namespace and its binding to one service account."""
        metadata = {"name": role, "namespace": k8s_labels.FLOWS_NAMESPACE}
        return [
            k8s.rbac.v1.Role(f"{name}-role", metadata=metadata, rules=rules, opts=opts),
            k8s.rbac.v1.RoleBinding(
                f"{name}-binding",
                metadata=metadata,
                role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                subjects=[subject],
                opts=opts,
            ),
        ]

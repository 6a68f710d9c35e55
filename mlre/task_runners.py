"""Which task runner runs the partitioned work (materialization and batch-inference partitions).

Pure: the choice in settings (`MLRE_TASK_RUNNER` and the `MLRE_DASK_*` fields) checked and turned
into a `RunnerPlan`; flows/runners.py builds Prefect's runner from it. Every Dask worker runs one
partition at a time (one thread), so the memory limit per worker bounds one partition's work.

Online-store writers: Redis takes parallel writers. SQLite is one file on one machine, so
dask-local serialises its writers with the engine's file lock (mlre.features.materialize), and a
runner whose workers may sit on other machines (dask-scheduler, dask-kubernetes) is refused.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlre import k8s_labels
from mlre.errors import ConfigError
from mlre.settings import Settings, TaskRunnerKind

DASK_KINDS: frozenset[TaskRunnerKind] = frozenset(
    {"dask-local", "dask-scheduler", "dask-kubernetes"}
)
# Runners whose workers may run on other machines than the flow run.
REMOTE_KINDS: frozenset[TaskRunnerKind] = frozenset({"dask-scheduler", "dask-kubernetes"})
# Feast names SQLite `sqlite` in feature_store.yaml, or by its class path.
SQLITE_TYPES = frozenset({"sqlite", "feast.infra.online_stores.sqlite.SqliteOnlineStore"})
_ADDRESS = re.compile(r"^(?:(?:tcp|tls)://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
# Kubernetes object names: lowercase RFC 1123 labels; the operator appends "-scheduler" etc.
_KUBE_NAME_MAX = 40
# Not copied to worker pods: the registry URL comes from the stack's Secret (envFrom), never as
# a plain value, and the node and pool names are the flow pod's own.
_NOT_FORWARDED = frozenset(
    {"MLRE_REGISTRY_URI", k8s_labels.NODE_NAME_ENV, k8s_labels.WORK_POOL_ENV}
)


@dataclass(frozen=True)
class KubeClusterPlan:
    """A per-run DaskCluster: `dask_kubernetes.operator.make_cluster_spec`'s arguments, and what
    every pod of the cluster gets on top (service account, node pool, the registry Secret)."""

    name: str
    namespace: str
    spec_args: dict[str, Any]
    pod_overrides: dict[str, Any]  # scheduler and worker pods
    worker_overrides: dict[str, Any] = field(default_factory=dict)  # worker pods only


@dataclass(frozen=True)
class RunnerPlan:
    """The runner to build: its kind and the options of that kind (the others stay empty)."""

    kind: TaskRunnerKind
    address: str = ""
    local_cluster: dict[str, Any] = field(default_factory=dict)
    kube: KubeClusterPlan | None = None

    @property
    def multi_process(self) -> bool:
        return self.kind in DASK_KINDS

    @property
    def shares_local_disk(self) -> bool:
        """Whether the workers see this machine's files (a staged copy, the SQLite file)."""
        return self.kind not in REMOTE_KINDS


def worker_memory(settings: Settings) -> str:
    """The per-worker memory limit in Dask's notation."""
    return f"{settings.dask_worker_memory_mb}MiB"


def local_cluster_kwargs(settings: Settings) -> dict[str, Any]:
    """`distributed.LocalCluster` options: worker processes, one partition each at a time."""
    return {
        "n_workers": settings.dask_workers,
        "processes": True,
        "threads_per_worker": 1,
        "memory_limit": worker_memory(settings),
        "host": settings.host,
        "dashboard_address": None,  # no web server per run (and no port to collide on)
    }


def kube_cluster_name(run_id: str) -> str:
    """A DaskCluster name for one flow run: a valid Kubernetes name, unique per run."""
    suffix = re.sub(r"[^a-z0-9]", "", run_id.lower())[:12] or "run"
    return f"mlre-dask-{suffix}"[:_KUBE_NAME_MAX]


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The flow run's MLRE_* settings for the worker pods, less the Secret's and the pod's own."""
    return {
        name: value
        for name, value in sorted(environ.items())
        if name.startswith("MLRE_") and name not in _NOT_FORWARDED
    }


def kube_cluster_plan(
    settings: Settings, run_id: str, environ: Mapping[str, str]
) -> KubeClusterPlan:
    """The DaskCluster of one flow run: the flows' image, bounded workers, the flows' identity."""
    memory = f"{settings.dask_worker_memory_mb}Mi"
    limits = {"memory": memory}
    pod_overrides: dict[str, Any] = {
        # The IRSA-annotated account of the flow pods: workers read S3 with the same role.
        "serviceAccountName": settings.dask_service_account,
        "nodeSelector": {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE},
        "envFrom": [{"secretRef": {"name": k8s_labels.FLOWS_DB_SECRET, "optional": True}}],
    }
    worker_overrides: dict[str, Any] = {}
    if settings.dask_worker_pool == "gpu":  # the workers; the scheduler stays on the CPU pool
        worker_overrides["nodeSelector"] = k8s_labels.gpu_node_selector()
        worker_overrides["tolerations"] = [k8s_labels.gpu_toleration()]
        limits[k8s_labels.GPU_RESOURCE] = "1"  # extended resource: the request follows the limit
    spec_args = {
        "image": settings.dask_image,
        "n_workers": settings.dask_workers,
        "resources": {
            "requests": {"cpu": str(settings.dask_worker_cpu), "memory": memory},
            "limits": limits,
        },
        "env": worker_env(environ),
        "worker_command": [
            "dask-worker",
            "--nthreads",
            "1",
            "--memory-limit",
            worker_memory(settings),
        ],
    }
    return KubeClusterPlan(
        name=kube_cluster_name(run_id),
        namespace=settings.dask_namespace,
        spec_args=spec_args,
        pod_overrides=pod_overrides,
        worker_overrides=worker_overrides,
    )


def with_pod_overrides(
    spec: dict[str, Any],
    overrides: Mapping[str, Any],
    worker_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of a DaskCluster manifest whose scheduler and worker pods carry `overrides`
    (`envFrom` goes on each container, the rest on the pod spec), the worker pods
    `worker_overrides` on top. The scheduler never holds a GPU (the operator's helper gives it
    the workers' resources)."""
    out = copy.deepcopy(spec)
    by_role = {"scheduler": dict(overrides), "worker": {**overrides, **(worker_overrides or {})}}
    for role, fields in by_role.items():
        pod = out["spec"][role]["spec"]
        pod.update({k: copy.deepcopy(v) for k, v in fields.items() if k != "envFrom"})
        for container in pod["containers"]:
            container["envFrom"] = copy.deepcopy(list(overrides.get("envFrom", [])))
            if role == "scheduler":  # its own copy: the helper shares one dict between roles
                resources = container["resources"] = copy.deepcopy(container.get("resources", {}))
                resources.get("limits", {}).pop(k8s_labels.GPU_RESOURCE, None)
    return out


def _check_choice(settings: Settings) -> None:
    """ConfigError naming the setting that is missing, malformed or set for another runner."""
    kind, address = settings.task_runner, settings.dask_scheduler_address
    if kind == "dask-scheduler" and not address:
        raise ConfigError(
            "MLRE_TASK_RUNNER=dask-scheduler needs MLRE_DASK_SCHEDULER_ADDRESS (e.g. "
            "tcp://dask-scheduler:8786); set it, or use MLRE_TASK_RUNNER=dask-local."
        )
    if address and kind != "dask-scheduler":
        raise ConfigError(
            f"MLRE_DASK_SCHEDULER_ADDRESS is set ({address}) but MLRE_TASK_RUNNER is {kind}; "
            "set MLRE_TASK_RUNNER=dask-scheduler to use that scheduler, or unset the address."
        )
    if address and not _ADDRESS.match(address):
        raise ConfigError(
            f"MLRE_DASK_SCHEDULER_ADDRESS={address!r} is not a scheduler address; "
            "write it as tcp://host:port (tls:// for TLS), e.g. tcp://10.0.0.5:8786."
        )
    if kind == "dask-kubernetes" and not settings.dask_image:
        raise ConfigError(
            "MLRE_TASK_RUNNER=dask-kubernetes needs MLRE_DASK_IMAGE: the image the flow pods "
            "run (workers import the flows), e.g. the work pool's `image` job variable."
        )


def runner_plan(settings: Settings, run_id: str, environ: Mapping[str, str]) -> RunnerPlan:
    """The checked runner choice of the settings. `run_id` names a per-run Kubernetes cluster;
    `environ` is the flow run's environment (its MLRE_* values go to worker pods)."""
    _check_choice(settings)
    kind = settings.task_runner
    if kind == "dask-local":
        return RunnerPlan(kind, local_cluster=local_cluster_kwargs(settings))
    if kind == "dask-scheduler":
        return RunnerPlan(kind, address=settings.dask_scheduler_address)
    if kind == "dask-kubernetes":
        return RunnerPlan(kind, kube=kube_cluster_plan(settings, run_id, environ))
    return RunnerPlan(kind)


def check_online_writers(kind: TaskRunnerKind, online_store_type: str) -> None:
    """Refuse a runner whose workers cannot all write the online store (see the module doc)."""
    if online_store_type in SQLITE_TYPES and kind in REMOTE_KINDS:
        raise ConfigError(
            f"MLRE_TASK_RUNNER={kind} runs partitions on other machines, but the online store "
            "is SQLite, one file on this machine that only its own processes can write. Use "
            "MLRE_TASK_RUNNER=dask-local (its writers take turns on the file) or in-process, or "
            "the production profile (Redis online store, parallel writers)."
        )

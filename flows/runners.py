"""The Prefect side of the task-runner choice: build the runner that the settings plan
(mlre.task_runners) and open it around a flow's fan-out of partition tasks.

A flow calls `partition_runner(...)` at run time, so deployments, the CLI and parent flows all get
the runner of the settings the flow run sees (MLRE_TASK_RUNNER, job variables in the cloud).
Tasks sent to Dask run in other processes: their parameters and results are pickled, so they take
paths and settings, never open stores or clients, and build those inside the task.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from mlre.settings import get_settings
from mlre.task_runners import (
    KubeClusterPlan,
    RunnerPlan,
    check_online_writers,
    runner_plan,
    with_pod_overrides,
)

LOCAL_CLUSTER = "distributed.LocalCluster"
KUBE_CLUSTER = "dask_kubernetes.operator.KubeCluster"


def kube_cluster_kwargs(plan: KubeClusterPlan) -> dict[str, Any]:
    """`KubeCluster` options: the operator's own DaskCluster spec with the flows' pod settings;
    the cluster is deleted when the flow run's fan-out ends."""
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(plan.name, **plan.spec_args)
    return {
        "name": plan.name,
        "namespace": plan.namespace,
        "custom_cluster_spec": with_pod_overrides(spec, plan.pod_overrides, plan.worker_overrides),
        "shutdown_on_close": True,
    }


def build_task_runner(plan: RunnerPlan) -> TaskRunner[Any]:
    """Prefect's thread pool, or a DaskTaskRunner on the planned cluster."""
    if not plan.multi_process:
        return ThreadPoolTaskRunner()
    # Imported here: distributed costs a second to import and the default never needs it.
    from prefect_dask import DaskTaskRunner

    if plan.kind == "dask-scheduler":
        return DaskTaskRunner(address=plan.address)
    if plan.kube is not None:
        return DaskTaskRunner(
            cluster_class=KUBE_CLUSTER, cluster_kwargs=kube_cluster_kwargs(plan.kube)
        )
    return DaskTaskRunner(cluster_class=LOCAL_CLUSTER, cluster_kwargs=plan.local_cluster)


@contextmanager
def partition_runner(
    online_store_type: str | None = None,
) -> Iterator[tuple[TaskRunner[Any], RunnerPlan]]:
    """The settings' task runner and its plan, started for one fan-out and stopped after it (a
    Dask cluster starts on the first task submitted). `online_store_type`: the store the tasks
    write, if any; refused for runners whose workers cannot all write it."""
    plan = runner_plan(get_settings(), str(flow_run.get_id() or "local"), os.environ)
    if online_store_type is not None:
        check_online_writers(plan.kind, online_store_type)
    with build_task_runner(plan) as runner:
        yield runner, plan

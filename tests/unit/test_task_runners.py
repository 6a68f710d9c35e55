"""The task-runner choice: settings checked into a plan, the online-store writer rule, the
per-run DaskCluster spec, and the Prefect runner built from each plan (nothing is started)."""

from __future__ import annotations

import pytest
from dask_kubernetes.operator import make_cluster_spec
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from pydantic import ValidationError

from flows.runners import KUBE_CLUSTER, LOCAL_CLUSTER, build_task_runner, kube_cluster_kwargs
from mlre import k8s_labels
from mlre.errors import ConfigError
from mlre.settings import Settings
from mlre.task_runners import (
    check_online_writers,
    kube_cluster_name,
    runner_plan,
    with_pod_overrides,
    worker_env,
)

pytestmark = pytest.mark.unit

RUN_ID = "5F0c2a9e-1b7d-4c3e-9a2f-0d8e7c6b5a41"
FLOW_ENV = {
    "MLRE_HOME": "/data/mlre",
    "MLRE_STORE_PROFILE": "production",
    "MLRE_REGISTRY_URI": "postgresql+psycopg://feast:secret@db/feast",
    "MLRE_NODE_NAME": "ip-10-0-1-7.ec2.internal",
    "PREFECT_API_KEY": "pnu_secret",
    "PATH": "/usr/bin",
}


def _plan(**fields: object):
    return runner_plan(Settings(**fields), RUN_ID, FLOW_ENV)


def test_default_is_prefects_thread_pool() -> None:
    plan = _plan()

    assert (plan.kind, plan.multi_process, plan.shares_local_disk) == ("in-process", False, True)
    assert isinstance(build_task_runner(plan), ThreadPoolTaskRunner)


def test_dask_local_runs_bounded_single_threaded_worker_processes() -> None:
    plan = _plan(task_runner="dask-local", dask_workers=3, dask_worker_memory_mb=1536)

    assert plan.local_cluster == {
        "n_workers": 3,
        "processes": True,
        "threads_per_worker": 1,
        "memory_limit": "1536MiB",
        "host": "127.0.0.1",
        "dashboard_address": None,
    }
    assert plan.shares_local_disk
    runner = build_task_runner(plan)
    assert isinstance(runner, DaskTaskRunner)
    assert (runner.cluster_class, runner.cluster_kwargs) == (LOCAL_CLUSTER, plan.local_cluster)


def test_dask_scheduler_connects_to_the_address() -> None:
    plan = _plan(task_runner="dask-scheduler", dask_scheduler_address="tcp://10.0.0.5:8786")

    assert not plan.shares_local_disk
    runner = build_task_runner(plan)
    assert isinstance(runner, DaskTaskRunner)
    assert (runner.address, runner.cluster_class) == ("tcp://10.0.0.5:8786", None)


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"task_runner": "dask-scheduler"}, ["MLRE_DASK_SCHEDULER_ADDRESS", "dask-local"]),
        (
            {"task_runner": "dask-local", "dask_scheduler_address": "tcp://10.0.0.5:8786"},
            ["MLRE_DASK_SCHEDULER_ADDRESS", "MLRE_TASK_RUNNER=dask-scheduler"],
        ),
        (
            {"task_runner": "dask-scheduler", "dask_scheduler_address": "http://dask/status"},
            ["MLRE_DASK_SCHEDULER_ADDRESS", "tcp://host:port"],
        ),
        ({"task_runner": "dask-kubernetes"}, ["MLRE_DASK_IMAGE"]),
    ],
)
def test_incomplete_or_contradictory_choices_name_the_setting(
    fields: dict[str, object], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        _plan(**fields)

    for name in names:
        assert name in str(raised.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_runner", "ray"),
        ("dask_workers", 0),
        ("dask_worker_memory_mb", 64),
        ("dask_worker_cpu", 0),
    ],
)
def test_out_of_range_values_are_refused_by_the_settings(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


@pytest.mark.parametrize(
    ("kind", "online", "refused"),
    [
        ("in-process", "sqlite", False),
        ("dask-local", "sqlite", False),  # same machine: the file lock serialises the writers
        ("dask-scheduler", "sqlite", True),
        ("dask-kubernetes", "feast.infra.online_stores.sqlite.SqliteOnlineStore", True),
        ("dask-scheduler", "redis", False),
        ("dask-kubernetes", "redis", False),
    ],
)
def test_sqlite_is_written_only_from_this_machine(kind: str, online: str, refused: bool) -> None:
    if not refused:
        check_online_writers(kind, online)  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigError, match=rf"MLRE_TASK_RUNNER={kind}.*SQLite.*dask-local"):
        check_online_writers(kind, online)  # type: ignore[arg-type]


def test_cluster_name_is_a_kubernetes_name_unique_per_run() -> None:
    name = kube_cluster_name(RUN_ID)

    assert name == "mlre-dask-5f0c2a9e1b7d"
    assert kube_cluster_name("another-run") != name
    assert kube_cluster_name("") == "mlre-dask-run"


def test_worker_pods_get_the_mlre_settings_but_not_secrets_or_the_flow_pods_identity() -> None:
    assert worker_env(FLOW_ENV) == {
        "MLRE_HOME": "/data/mlre",
        "MLRE_STORE_PROFILE": "production",
    }


def _kube_settings() -> Settings:
    return Settings(
        task_runner="dask-kubernetes",
        dask_image="registry.example/mlre-flows:1.2.3",
        dask_workers=4,
        dask_worker_memory_mb=3072,
        dask_worker_cpu=1.5,
    )


def test_kube_cluster_is_the_operators_spec_with_the_flows_identity() -> None:
    plan = runner_plan(_kube_settings(), RUN_ID, FLOW_ENV)
    assert plan.kube is not None
    kwargs = kube_cluster_kwargs(plan.kube)
    spec = kwargs["custom_cluster_spec"]

    assert (kwargs["name"], kwargs["namespace"]) == (plan.kube.name, k8s_labels.FLOWS_NAMESPACE)
    assert kwargs["shutdown_on_close"] is True
    assert spec["metadata"]["name"] == plan.kube.name
    for role in ("scheduler", "worker"):
        pod = spec["spec"][role]["spec"]
        assert pod["serviceAccountName"] == k8s_labels.FLOWS_SERVICE_ACCOUNT
        assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/mlre-flows:1.2.3"
        assert container["envFrom"] == [
            {"secretRef": {"name": k8s_labels.FLOWS_DB_SECRET, "optional": True}}
        ]
        assert {"name": "MLRE_HOME", "value": "/data/mlre"} in container["env"]
        assert all(e["name"] != "MLRE_REGISTRY_URI" for e in container["env"])
    worker = spec["spec"]["worker"]
    (container,) = worker["spec"]["containers"]
    assert worker["replicas"] == 4
    assert container["resources"] == {
        "requests": {"cpu": "1.5", "memory": "3072Mi"},
        "limits": {"memory": "3072Mi"},
    }
    assert container["args"][:5] == ["dask-worker", "--nthreads", "1", "--memory-limit", "3072MiB"]
    # Apart from the overrides it is exactly the spec the operator's own helper makes.
    plain = make_cluster_spec(plan.kube.name, **plan.kube.spec_args)
    assert with_pod_overrides(plain, plan.kube.pod_overrides) == spec
    assert plain["spec"]["worker"]["spec"].get("serviceAccountName") is None


def test_gpu_workers_get_the_gpu_pool_and_a_gpu_but_the_scheduler_stays_on_cpu() -> None:
    settings = _kube_settings().model_copy(
        update={"dask_worker_pool": "gpu", "dask_service_account": "trainer"}
    )
    plan = runner_plan(settings, RUN_ID, FLOW_ENV)
    assert plan.kube is not None
    spec = kube_cluster_kwargs(plan.kube)["custom_cluster_spec"]["spec"]

    worker, scheduler = spec["worker"]["spec"], spec["scheduler"]["spec"]
    assert worker["nodeSelector"] == k8s_labels.gpu_node_selector()
    assert worker["tolerations"] == [k8s_labels.gpu_toleration()]
    assert worker["containers"][0]["resources"]["limits"][k8s_labels.GPU_RESOURCE] == "1"
    assert scheduler["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
    assert "tolerations" not in scheduler
    assert k8s_labels.GPU_RESOURCE not in scheduler["containers"][0]["resources"]["limits"]
    assert {worker["serviceAccountName"], scheduler["serviceAccountName"]} == {"trainer"}


def test_kube_runner_creates_a_kube_cluster_per_run() -> None:
    plan = runner_plan(_kube_settings(), RUN_ID, FLOW_ENV)

    runner = build_task_runner(plan)

    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_class == KUBE_CLUSTER
    assert (
        runner.cluster_kwargs["custom_cluster_spec"]["metadata"]["name"] == "mlre-dask-5f0c2a9e1b7d"
    )
    assert runner.cluster_kwargs["shutdown_on_close"] is True
    other = build_task_runner(runner_plan(_kube_settings(), "another-run-id", FLOW_ENV))
    assert other.cluster_kwargs["name"] != runner.cluster_kwargs["name"]

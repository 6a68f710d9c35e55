"""Issue 17, part 4: the Dask Kubernetes operator on the CPU pool, RBAC limited to the flows
namespace, the worker defaults flow runs read, and the network paths a Dask cluster needs."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from infra import dask_operator
from infra.config import DaskConfig, InfraConfigError, load_config
from infra.policy import rules
from mlre import k8s_labels
from tests.infra.infra_harness import (
    TEST_IMAGES,
    Run,
    helm_releases,
    manifests,
    project_defaults,
    run_mocked,
    stack_config,
    violations,
)
from tests.infra.netpol import Pod, allowed

pytestmark = pytest.mark.infra

FLOWS, OPERATOR_NS = k8s_labels.FLOWS_NAMESPACE, dask_operator.NAMESPACE
FLOWS_ACCOUNT = (FLOWS, k8s_labels.FLOWS_SERVICE_ACCOUNT)
OPERATOR_ACCOUNT = (OPERATOR_NS, dask_operator.OPERATOR_SA)
K8S_VERSION = "1.33"
CPU_POOL = {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
# Exactly what the flows' service account may do, as (api group, resource, verb).
FLOWS_GRANTS = {
    *(
        ("kubernetes.dask.org", resource, verb)
        for resource in ("daskclusters", "daskworkergroups", "daskautoscalers")
        for verb in ("get", "list", "watch", "create", "patch", "delete")
    ),
    *(
        ("", resource, verb)
        for resource in ("pods", "services")
        for verb in ("get", "list", "watch")
    ),
    ("", "pods/log", "get"),
}


def _release(run: Run) -> dict[str, Any]:
    return helm_releases(run)[dask_operator.CHART]


def _of_kind(run: Run, kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests(run) if m["kind"] == kind]


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """A Role's rules flattened to (api group, resource, verb)."""
    return {
        (group, resource, verb)
        for rule in role.get("rules") or []
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _roles_bound_to(run: Run, account: tuple[str, str]) -> list[dict[str, Any]]:
    """Every Role a RoleBinding grants to the service account (namespace, name), anywhere."""
    subject = {"kind": "ServiceAccount", "name": account[1], "namespace": account[0]}
    bound = {
        (b["metadata"]["namespace"], b["roleRef"]["name"])
        for b in _of_kind(run, "RoleBinding")
        if subject in b["subjects"]
    }
    return [
        r
        for r in _of_kind(run, "Role")
        if (r["metadata"]["namespace"], r["metadata"]["name"]) in bound
    ]


def _chart_deployment(values: dict[str, Any]) -> dict[str, Any]:
    """The operator Deployment as the chart's templates/deployment.yaml renders these values."""
    container = {
        "name": dask_operator.CHART,
        "image": "ghcr.io/dask/dask-kubernetes-operator:2026.3.0",
        "args": ["--liveness=http://0.0.0.0:8080/healthz", *values["kopfArgs"]],
        "securityContext": values["securityContext"],
        "resources": values["resources"],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 5},
    }
    labels = dask_operator.OPERATOR_PODS
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": dask_operator.RELEASE, "labels": labels},
        "spec": {
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": values["serviceAccount"]["name"],
                    "securityContext": values["podSecurityContext"],
                    "containers": [container],
                    "nodeSelector": values["nodeSelector"],
                },
            },
        },
    }


def test_operator_chart_is_pinned_and_runs_on_the_cpu_pool(stack_run: Run) -> None:
    release = _release(stack_run)
    assert release["version"] == project_defaults()["mlre:daskOperatorChartVersion"]
    assert release["repositoryOpts"] == {"repo": "https://helm.dask.org"}
    assert release["namespace"] == OPERATOR_NS
    (pinned,) = [p for p in rules.POLICIES if p.name == "helm-chart-pinned"]
    assert not violations(pinned, "kubernetes:helm.sh/v3:Release", release)
    values = release["values"]
    assert values["nodeSelector"] == CPU_POOL
    assert "tolerations" not in values  # never on the (tainted) GPU nodes
    # It reconciles DaskClusters in the flows namespace only.
    assert values["kopfArgs"] == ["--standalone", f"--namespace={FLOWS}"]


def test_operator_pod_is_restricted_and_sized(stack_runs: dict[str, Run]) -> None:
    values = _release(stack_runs["dev"])["values"]
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == dask_operator.OPERATOR_UID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["readOnlyRootFilesystem"] is True
    assert values["resources"]["requests"]["cpu"]
    assert values["resources"]["limits"]["memory"] == values["resources"]["requests"]["memory"]


def test_rendered_operator_deployment_is_valid_kubernetes(stack_runs: dict[str, Run]) -> None:
    deployment = _chart_deployment(_release(stack_runs["dev"])["values"])
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_dask_objects_are_declared_and_schema_valid(stack_runs: dict[str, Run]) -> None:
    ours = {
        ("Namespace", OPERATOR_NS),
        ("Role", dask_operator.OPERATOR_SA),
        ("RoleBinding", dask_operator.OPERATOR_SA),
        ("Role", dask_operator.FLOWS_ROLE),
        ("RoleBinding", dask_operator.FLOWS_ROLE),
        ("ConfigMap", dask_operator.SETTINGS_CONFIG_MAP),
    }
    found = [m for m in manifests(stack_runs["dev"]) if (m["kind"], m["metadata"]["name"]) in ours]
    assert {(m["kind"], m["metadata"]["name"]) for m in found} == ours
    for manifest in found:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_operator_namespace_enforces_the_restricted_profile(stack_runs: dict[str, Run]) -> None:
    (ns,) = [
        m for m in _of_kind(stack_runs["dev"], "Namespace") if m["metadata"]["name"] == OPERATOR_NS
    ]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_flows_account_gets_exactly_what_kubecluster_needs(stack_run: Run) -> None:
    # Every Role bound to the account, anywhere (Feast's rule-less `feast-writer` included).
    grants = set().union(*(_grants(r) for r in _roles_bound_to(stack_run, FLOWS_ACCOUNT)))
    assert grants == FLOWS_GRANTS


def test_operator_may_act_in_the_flows_namespace_only(stack_run: Run) -> None:
    (role,) = _roles_bound_to(stack_run, OPERATOR_ACCOUNT)
    assert role["metadata"]["namespace"] == FLOWS
    grants = _grants(role)
    assert ("kubernetes.dask.org", "daskclusters", "watch") in grants
    assert ("apps", "deployments", "create") in grants
    assert not any("*" in grant for grant in grants)
    assert not any(resource == "secrets" for _, resource, _ in grants)


def test_nothing_cluster_wide_for_the_flows_or_the_operator(stack_run: Run) -> None:
    ours = {FLOWS_ACCOUNT, OPERATOR_ACCOUNT}
    for binding in _of_kind(stack_run, "ClusterRoleBinding"):
        subjects = {(s.get("namespace"), s["name"]) for s in binding.get("subjects", [])}
        assert not subjects & ours, binding["metadata"]["name"]
    # The chart's own ClusterRole (verbs "*" on every pod, Service and Deployment) is off.
    assert _release(stack_run)["values"]["rbac"] == {"create": False}


def test_worker_defaults_reach_flow_runs(stack_run: Run) -> None:
    (config_map,) = [
        m
        for m in _of_kind(stack_run, "ConfigMap")
        if m["metadata"]["name"] == dask_operator.SETTINGS_CONFIG_MAP
    ]
    assert config_map["metadata"]["namespace"] == FLOWS
    defaults = project_defaults()
    assert config_map["data"] == {
        "MLRE_TASK_RUNNER": "dask-kubernetes",
        "MLRE_DASK_IMAGE": TEST_IMAGES["mlre:servingImage"],  # the flows image
        "MLRE_DASK_WORKERS": str(defaults["mlre:daskMaxWorkers"]),
        "MLRE_DASK_WORKER_CPU": defaults["mlre:daskWorkerCpu"],  # "1": whole cores as is
        "MLRE_DASK_WORKER_MEMORY_MB": str(defaults["mlre:daskWorkerMemoryMb"]),
        "MLRE_DASK_NAMESPACE": FLOWS,
        "MLRE_DASK_SERVICE_ACCOUNT": k8s_labels.FLOWS_SERVICE_ACCOUNT,
        "MLRE_DASK_WORKER_POOL": "cpu",
    }
    assert stack_run.outputs["dask_settings"] == config_map["data"]


def _load(**overrides: object) -> DaskConfig:
    return run_mocked(load_config, config=stack_config("dev", overrides)).value.dask


def test_gpu_workers_are_a_setting() -> None:
    cfg = _load(**{"mlre:daskWorkerPool": "gpu", "mlre:daskMaxWorkers": 3})
    settings = dask_operator.worker_settings(cfg, "img")
    assert settings["MLRE_DASK_WORKER_POOL"] == k8s_labels.GPU_POOL_LABEL_VALUE
    assert settings["MLRE_DASK_WORKERS"] == "3"


def test_worker_cpu_reaches_flow_runs_in_cores() -> None:
    # The flows read MLRE_DASK_WORKER_CPU as a float; config takes a Kubernetes quantity.
    cfg = _load(**{"mlre:daskWorkerCpu": "500m"})
    assert dask_operator.worker_settings(cfg, "img")["MLRE_DASK_WORKER_CPU"] == "0.5"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"mlre:daskWorkerCpu": "lots"}, "mlre:daskWorkerCpu"),
        ({"mlre:daskWorkerCpu": "0"}, "mlre:daskWorkerCpu"),
        ({"mlre:daskWorkerMemoryMb": 128}, "mlre:daskWorkerMemoryMb"),
        ({"mlre:daskMaxWorkers": 0}, "mlre:daskMaxWorkers"),
        ({"mlre:daskWorkerPool": "tpu"}, "mlre:daskWorkerPool"),
        ({"mlre:daskWorkerPool": "gpu", "mlre:gpuPools": []}, "mlre:gpuPools"),
    ],
)
def test_bad_dask_config_names_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(InfraConfigError, match=key):
        _load(**overrides)


# --- network paths (the dev stack's rendered policies, Kubernetes semantics) ----------------

FLOW_RUN = Pod(FLOWS, {"prefect.io/flow-run-id": "0b5c"})
SCHEDULER = Pod(FLOWS, {**dask_operator.SCHEDULER_PODS, "dask.org/cluster-name": "run-1"})
WORKER = Pod(FLOWS, {**dask_operator.WORKER_PODS, "dask.org/cluster-name": "run-1"})
OPERATOR = Pod(OPERATOR_NS, dask_operator.OPERATOR_PODS)
OTHER_TEAM = Pod("team-a", {"app": "web"})
WORKER_PORT = 40123  # a worker listens on a port it picks at start

DASK_ALLOWED = [
    (FLOW_RUN, SCHEDULER, 8786),
    (WORKER, SCHEDULER, 8786),
    (SCHEDULER, WORKER, WORKER_PORT),
    (WORKER, WORKER, WORKER_PORT),
    (OPERATOR, SCHEDULER, 8786),
    (OPERATOR, SCHEDULER, 8787),
]
DASK_DENIED = [
    (OTHER_TEAM, SCHEDULER, 8786),
    (OTHER_TEAM, WORKER, WORKER_PORT),
    (FLOW_RUN, WORKER, WORKER_PORT),  # the client talks to the scheduler only
    (FLOW_RUN, SCHEDULER, 22),
    (OPERATOR, WORKER, WORKER_PORT),
    (FLOW_RUN, OPERATOR, 8080),  # nothing calls the operator
    (OTHER_TEAM, OPERATOR, 8080),
]


@pytest.fixture(scope="module")
def dev_policies(stack_runs: dict[str, Run]) -> list[dict[str, Any]]:
    return _of_kind(stack_runs["dev"], "NetworkPolicy")


@pytest.mark.parametrize(("source", "target", "port"), DASK_ALLOWED)
def test_dask_paths_are_open(dev_policies: Any, source: Pod, target: Pod, port: int) -> None:
    assert allowed(dev_policies, source, target, port)


@pytest.mark.parametrize(("source", "target", "port"), DASK_DENIED)
def test_other_dask_paths_are_refused(
    dev_policies: Any, source: Pod, target: Pod, port: int
) -> None:
    assert not allowed(dev_policies, source, target, port)


def test_flow_runs_read_every_setting_the_stack_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlre.settings import Settings

    exported = dask_operator.worker_settings(
        DaskConfig(operator_chart_version="2026.3.0", worker_cpu=0.5, worker_memory_mb=1024,
                   max_workers=3, worker_pool="gpu"),
        "registry.example/mlre:1",
    )  # fmt: skip
    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    fields = {f"MLRE_{name.upper()}" for name in Settings.model_fields}
    assert set(exported) <= fields  # nothing exported that no setting reads
    assert settings.task_runner == "dask-kubernetes"
    assert settings.dask_image == "registry.example/mlre:1"
    assert (settings.dask_workers, settings.dask_worker_memory_mb) == (3, 1024)
    assert (settings.dask_worker_cpu, settings.dask_worker_pool) == (0.5, "gpu")
    assert settings.dask_service_account == k8s_labels.FLOWS_SERVICE_ACCOUNT

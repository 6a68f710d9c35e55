"""The Kubernetes work pools' job templates: valid Jobs landing where the Pulumi node pools are."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.schema_tools import ValidationError, is_valid_schema, validate
from prefect.utilities.templating import apply_values
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from flows import work_pools
from infra.node_pools import EKS_TAINT_EFFECT
from mlre import k8s_labels
from mlre.errors import ConfigError
from mlre.settings import HEARTBEAT_ENV, Settings
from tests.infra.infra_harness import Run

pytestmark = pytest.mark.infra

K8S_VERSION = "1.33"
ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deploy" / "work-pools"
GPU_VALUES = {"image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlre:abc123", "gpu_limit": 2}
KUBERNETES_EFFECT = {eks: k8s for k8s, eks in EKS_TAINT_EFFECT.items()}


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod_spec(manifest)["containers"]
    return container


def _env(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's env entries by name; fails on a duplicate name (ambiguous for kubelet)."""
    entries = _container(manifest)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def _worker_configuration(template: dict[str, Any], values: dict[str, Any]) -> Any:
    """The worker's job configuration for a deployment's values, as the worker builds it."""
    merged = {**work_pools.variable_defaults(template), **values}
    return KubernetesWorkerJobConfiguration(**apply_values(template["job_configuration"], merged))


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    """Both pools' templates, built once (loading prefect-kubernetes takes seconds)."""
    return {pool: work_pools.base_job_template(pool) for pool in work_pools.KUBERNETES_POOLS}


@pytest.fixture(scope="module")
def gpu_job(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Job a GPU deployment asking for two GPUs gets."""
    return work_pools.render_job_manifest(templates[k8s_labels.GPU_WORK_POOL], GPU_VALUES)


@pytest.fixture(scope="module")
def cpu_job(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Job a CPU deployment gets with the pool's defaults and an image."""
    values = {"image": GPU_VALUES["image"]}
    return work_pools.render_job_manifest(templates[k8s_labels.CPU_WORK_POOL], values)


@pytest.mark.parametrize("pool", work_pools.KUBERNETES_POOLS)
def test_committed_template_is_the_generated_one(pool: str) -> None:
    committed = (COMMITTED / f"{pool}.json").read_text()
    assert committed == work_pools.template_json(pool), (
        f"deploy/work-pools/{pool}.json is stale: run "
        "`.venv/bin/python -m flows.work_pools deploy/work-pools`"
    )


def test_write_templates_writes_one_file_per_pool(tmp_path: Path) -> None:
    written = work_pools.write_templates(tmp_path / "pools")
    assert sorted(p.name for p in written) == ["k8s-cpu.json", "k8s-gpu.json"]
    assert written[0].read_text() == work_pools.template_json(written[0].stem)


def test_only_kubernetes_pools_have_templates() -> None:
    with pytest.raises(ConfigError, match="local"):
        work_pools.base_job_template(k8s_labels.LOCAL_WORK_POOL)


def test_templates_extend_prefects_default(templates: dict[str, dict[str, Any]]) -> None:
    default = work_pools.default_base_job_template()
    for template in templates.values():
        # Every default variable survives, so Prefect's UI and docs still describe our pools.
        assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
        assert set(default["job_configuration"]) == set(template["job_configuration"])
    assert "tolerations" not in _pod_spec(default["job_configuration"]["job_manifest"])


@pytest.mark.parametrize("pool", work_pools.KUBERNETES_POOLS)
def test_prefect_server_accepts_the_template(
    pool: str, templates: dict[str, dict[str, Any]]
) -> None:
    template = templates[pool]
    # What `prefect work-pool create --base-job-template` sends and the server validates.
    WorkPoolCreate(name=pool, type="kubernetes", base_job_template=template)
    is_valid_schema(template["variables"], preprocess=False)
    defaults = work_pools.variable_defaults(template)
    validate(defaults, template["variables"], raise_on_error=True, ignore_required=True)


@pytest.mark.parametrize("pool", work_pools.KUBERNETES_POOLS)
def test_kubernetes_worker_accepts_the_configuration(
    pool: str, templates: dict[str, dict[str, Any]]
) -> None:
    template = templates[pool]
    values = {**work_pools.variable_defaults(template), "image": GPU_VALUES["image"]}
    config = apply_values(template["job_configuration"], values)
    # The worker's own validator: refuses a manifest missing fields it relies on.
    job = KubernetesWorkerJobConfiguration(**config)
    assert job.namespace == k8s_labels.FLOWS_NAMESPACE


def test_gpu_limit_below_one_is_refused(templates: dict[str, dict[str, Any]]) -> None:
    schema = templates[k8s_labels.GPU_WORK_POOL]["variables"]
    with pytest.raises(ValidationError, match="gpu_limit"):
        validate({"gpu_limit": 0}, schema, raise_on_error=True, ignore_required=True)


def test_gpu_limit_is_a_documented_variable(templates: dict[str, dict[str, Any]]) -> None:
    spec = templates[k8s_labels.GPU_WORK_POOL]["variables"]["properties"]["gpu_limit"]
    assert spec["default"] == 1
    assert spec["type"] == "integer"
    assert k8s_labels.GPU_RESOURCE in spec["description"]


def test_unknown_job_variable_is_named(templates: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match="gpu_limits"):
        work_pools.render_job_manifest(templates[k8s_labels.GPU_WORK_POOL], {"gpu_limits": 2})


@pytest.mark.parametrize("job", ["gpu_job", "cpu_job"])
def test_rendered_job_is_valid_kubernetes(job: str, request: pytest.FixtureRequest) -> None:
    manifest = request.getfixturevalue(job)
    assert manifest["kind"] == "Job"
    # Exactly what the worker submits passes the schema once the API server's drops are applied.
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=False)
    kubernetes_validate.validate(work_pools.api_server_view(manifest), K8S_VERSION, strict=True)


def test_schema_check_can_fail(gpu_job: dict[str, Any]) -> None:
    bad = work_pools.api_server_view(gpu_job)
    _pod_spec(bad)["tolerations"] = [{"key": k8s_labels.GPU_TAINT_KEY, "effect": 7}]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_gpu_job_gets_the_requested_gpus(gpu_job: dict[str, Any]) -> None:
    resources = _container(gpu_job)["resources"]
    assert resources["limits"][k8s_labels.GPU_RESOURCE] == GPU_VALUES["gpu_limit"]
    assert _container(gpu_job)["image"] == GPU_VALUES["image"]


def test_gpu_job_defaults_to_one_gpu(templates: dict[str, dict[str, Any]]) -> None:
    job = work_pools.render_job_manifest(templates[k8s_labels.GPU_WORK_POOL], {})
    assert _container(job)["resources"]["limits"][k8s_labels.GPU_RESOURCE] == 1


def test_gpu_job_selects_and_tolerates_gpu_nodes(gpu_job: dict[str, Any]) -> None:
    pod = _pod_spec(gpu_job)
    assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.GPU_POOL_LABEL_VALUE}
    assert pod["tolerations"] == [
        {
            "key": k8s_labels.GPU_TAINT_KEY,
            "operator": "Equal",
            "value": k8s_labels.GPU_TAINT_VALUE,
            "effect": k8s_labels.GPU_TAINT_EFFECT,
        }
    ]


def test_gpu_job_tolerates_the_taint_pulumi_puts_on_gpu_nodes(
    gpu_job: dict[str, Any], stack_runs: dict[str, Run]
) -> None:
    (toleration,) = _pod_spec(gpu_job)["tolerations"]
    for stack, run in stack_runs.items():
        groups = [
            r.inputs for r in run.of_type("aws:eks/nodeGroup:NodeGroup") if r.inputs.get("taints")
        ]
        assert groups, f"{stack}: the program declared no tainted (GPU) node group"
        for group in groups:
            # The node group as the program declared it: its labels must match our selector
            # and every taint must be tolerated, or the pod stays Pending forever.
            assert _pod_spec(gpu_job)["nodeSelector"].items() <= group["labels"].items()
            for taint in group["taints"]:
                assert toleration["key"] == taint["key"]
                assert toleration["operator"] == "Equal"
                assert toleration["value"] == taint["value"]
                assert toleration["effect"] == KUBERNETES_EFFECT[taint["effect"]]


def test_cpu_job_lands_on_cpu_nodes_declared_by_pulumi(
    cpu_job: dict[str, Any], stack_runs: dict[str, Run]
) -> None:
    selector = _pod_spec(cpu_job)["nodeSelector"]
    for run in stack_runs.values():
        untainted = [
            r.inputs
            for r in run.of_type("aws:eks/nodeGroup:NodeGroup")
            if not r.inputs.get("taints")
        ]
        assert any(selector.items() <= group["labels"].items() for group in untainted)


def test_cpu_job_has_no_gpu_and_no_toleration(
    cpu_job: dict[str, Any], templates: dict[str, dict[str, Any]]
) -> None:
    pod = _pod_spec(cpu_job)
    assert "tolerations" not in pod
    assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
    resources = _container(cpu_job)["resources"]
    assert k8s_labels.GPU_RESOURCE not in resources["limits"]
    assert k8s_labels.GPU_RESOURCE not in resources["requests"]
    assert "gpu_limit" not in templates[k8s_labels.CPU_WORK_POOL]["variables"]["properties"]


@pytest.mark.parametrize("job", ["gpu_job", "cpu_job"])
def test_job_identity_cleanup_and_security(job: str, request: pytest.FixtureRequest) -> None:
    manifest = request.getfixturevalue(job)
    pod = _pod_spec(manifest)
    assert manifest["metadata"]["namespace"] == k8s_labels.FLOWS_NAMESPACE
    assert pod["serviceAccountName"] == k8s_labels.FLOWS_SERVICE_ACCOUNT
    assert manifest["spec"]["ttlSecondsAfterFinished"] == work_pools.FINISHED_JOB_TTL_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == work_pools.FLOW_JOB_UID
    assert _container(manifest)["securityContext"]["allowPrivilegeEscalation"] is False
    requests = _container(manifest)["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)
    assert _container(manifest)["resources"]["limits"]["memory"] == requests["memory"]


def test_deployment_values_override_defaults(templates: dict[str, dict[str, Any]]) -> None:
    values = {"service_account_name": "other", "finished_job_ttl": 60, "memory_limit": "24Gi"}
    job = work_pools.render_job_manifest(templates[k8s_labels.GPU_WORK_POOL], values)
    assert _pod_spec(job)["serviceAccountName"] == "other"
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    assert _container(job)["resources"]["limits"]["memory"] == "24Gi"


def test_flow_job_uid_is_the_images_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = work_pools.FLOW_JOB_UID
    assert f"USER {uid}:{uid}" in dockerfile


@pytest.mark.parametrize("job", ["gpu_job", "cpu_job"])
def test_flow_pods_heartbeat_for_zombie_detection(job: str, request: pytest.FixtureRequest) -> None:
    env = _env(request.getfixturevalue(job))
    # The zombie automation counts missed heartbeats of this period (flows.automations).
    assert env[HEARTBEAT_ENV]["value"] == str(Settings.model_fields["flow_heartbeat_s"].default)


# --- GPU-aware scheduling: what a run on each pool gets -------------------------------------


def test_gpu_job_is_scheduled_onto_a_gpu_node(
    gpu_job: dict[str, Any], templates: dict[str, dict[str, Any]]
) -> None:
    pod, container = _pod_spec(gpu_job), _container(gpu_job)
    assert container["resources"]["limits"][k8s_labels.GPU_RESOURCE] == GPU_VALUES["gpu_limit"]
    assert k8s_labels.gpu_toleration() in pod["tolerations"]
    assert pod["nodeSelector"] == k8s_labels.gpu_node_selector()
    configuration = _worker_configuration(templates[k8s_labels.GPU_WORK_POOL], GPU_VALUES)
    # Scale-from-zero node plus the CUDA image pull: Prefect's 60 s would mark the run Crashed.
    assert configuration.pod_watch_timeout_seconds >= 600
    assert (
        configuration.pod_watch_timeout_seconds
        == work_pools.POD_WATCH_TIMEOUT_SECONDS[k8s_labels.GPU_WORK_POOL]
    )


def test_cpu_job_never_asks_for_or_tolerates_a_gpu(
    cpu_job: dict[str, Any], templates: dict[str, dict[str, Any]]
) -> None:
    pod, resources = _pod_spec(cpu_job), _container(cpu_job)["resources"]
    assert all(k8s_labels.GPU_RESOURCE not in part for part in resources.values())
    assert not [t for t in pod.get("tolerations", []) if t["key"] == k8s_labels.GPU_TAINT_KEY]
    assert pod["nodeSelector"] != k8s_labels.gpu_node_selector()
    configuration = _worker_configuration(templates[k8s_labels.CPU_WORK_POOL], {})
    assert 60 < configuration.pod_watch_timeout_seconds < 900


def test_pod_watch_timeout_uses_prefects_own_variable(
    templates: dict[str, dict[str, Any]],
) -> None:
    default = work_pools.default_base_job_template()["variables"]["properties"]
    for pool, template in templates.items():
        spec = template["variables"]["properties"]["pod_watch_timeout_seconds"]
        assert spec == {**default["pod_watch_timeout_seconds"], "default": spec["default"]}
        assert spec["default"] == work_pools.POD_WATCH_TIMEOUT_SECONDS[pool]
    # A deployment can still lengthen it (e.g. a larger image).
    config = _worker_configuration(
        templates[k8s_labels.GPU_WORK_POOL], {"pod_watch_timeout_seconds": 1800}
    )
    assert config.pod_watch_timeout_seconds == 1800


@pytest.mark.parametrize("pool", work_pools.KUBERNETES_POOLS)
def test_flow_pods_name_their_node_and_pool(
    pool: str, templates: dict[str, dict[str, Any]]
) -> None:
    env = _env(work_pools.render_job_manifest(templates[pool], {"image": GPU_VALUES["image"]}))
    node = env[k8s_labels.NODE_NAME_ENV]
    # The downward API: the kubelet fills in the node the pod was scheduled onto.
    assert node == {
        "name": k8s_labels.NODE_NAME_ENV,
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
    }
    assert env[k8s_labels.WORK_POOL_ENV] == {"name": k8s_labels.WORK_POOL_ENV, "value": pool}


def test_a_deployments_env_keeps_node_and_pool(templates: dict[str, dict[str, Any]]) -> None:
    template = templates[k8s_labels.GPU_WORK_POOL]
    values = {"env": {"EXTRA": "1", k8s_labels.WORK_POOL_ENV: "override"}}
    env = _env(work_pools.render_job_manifest(template, values))
    assert env["EXTRA"]["value"] == "1"
    assert "valueFrom" in env[k8s_labels.NODE_NAME_ENV]
    # Same name: the deployment's value wins, once (no duplicate entry).
    assert env[k8s_labels.WORK_POOL_ENV]["value"] == "override"


def test_the_workers_flow_run_preparation_keeps_the_downward_api_entry(
    templates: dict[str, dict[str, Any]],
) -> None:
    template = templates[k8s_labels.GPU_WORK_POOL]
    configuration = _worker_configuration(template, GPU_VALUES)
    flow_run = FlowRun(flow_id=uuid.uuid4(), name="gpu-smoke")
    # Exactly what the worker runs before it submits a flow run's Job.
    configuration.prepare_for_flow_run(flow_run)
    manifest = configuration.job_manifest
    env = _env(manifest)
    assert "valueFrom" in env[k8s_labels.NODE_NAME_ENV]
    assert env[k8s_labels.WORK_POOL_ENV]["value"] == k8s_labels.GPU_WORK_POOL
    assert env["PREFECT__FLOW_RUN_ID"]["value"] == str(flow_run.id)
    assert HEARTBEAT_ENV in env
    kubernetes_validate.validate(work_pools.api_server_view(manifest), K8S_VERSION, strict=True)


def test_settings_and_training_read_the_env_the_pods_get(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlre import training

    monkeypatch.setenv(k8s_labels.NODE_NAME_ENV, "ip-10-0-3-7.ec2.internal")
    monkeypatch.setenv(k8s_labels.WORK_POOL_ENV, k8s_labels.GPU_WORK_POOL)
    settings = Settings()
    assert settings.node_name == "ip-10-0-3-7.ec2.internal"
    assert settings.work_pool == k8s_labels.GPU_WORK_POOL
    # The "device=cuda but no GPU" error names the node through the same variable.
    assert training.NODE_NAME_ENV == k8s_labels.NODE_NAME_ENV


@pytest.mark.parametrize("job", ["cpu_job", "gpu_job"])
def test_flow_pods_reach_the_registry_as_the_feast_role_over_verified_tls(
    job: str, request: pytest.FixtureRequest, stack_runs: dict[str, Run]
) -> None:
    manifest = request.getfixturevalue(job)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"secretRef": {"name": k8s_labels.FLOWS_DB_SECRET, "optional": True}} in container[
        "envFrom"
    ]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "rds-ca"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "rds-ca"]
    assert volume["configMap"]["name"] == k8s_labels.RDS_CA_CONFIG_MAP
    # The Secret the stack writes there names a CA file inside that mount.
    for run in stack_runs.values():
        (secret,) = [
            r.inputs for r in run.of_type("kubernetes:core/v1:Secret")
            if r.inputs["metadata"]["name"] == k8s_labels.FLOWS_DB_SECRET
        ]  # fmt: skip
        (url,) = secret["stringData"].values()
        assert "sslmode=verify-full" in url
        assert f"sslrootcert={mount['mountPath']}/" in url
        assert secret["metadata"]["namespace"] == k8s_labels.FLOWS_NAMESPACE
    (config_map,) = [
        r.inputs for r in stack_runs["dev"].of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"] == {"name": k8s_labels.RDS_CA_CONFIG_MAP,
                                    "namespace": k8s_labels.FLOWS_NAMESPACE}
    ]  # fmt: skip
    assert config_map["data"]


@pytest.mark.parametrize("job", ["cpu_job", "gpu_job"])
def test_flow_pods_persist_resumable_results_to_the_stacks_results_bucket(
    job: str, request: pytest.FixtureRequest, stack_runs: dict[str, Run]
) -> None:
    manifest = request.getfixturevalue(job)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    source = {"configMapRef": {"name": k8s_labels.FLOWS_RESULTS_CONFIG_MAP, "optional": True}}
    assert source in container["envFrom"]
    for run in stack_runs.values():
        (config_map,) = [
            r.inputs for r in run.of_type("kubernetes:core/v1:ConfigMap")
            if r.inputs["metadata"]["name"] == k8s_labels.FLOWS_RESULTS_CONFIG_MAP
        ]  # fmt: skip
        assert config_map["metadata"]["namespace"] == k8s_labels.FLOWS_NAMESPACE
        uri = config_map["data"]["MLRE_RESULTS_URI"]
        assert set(config_map["data"]) == {"MLRE_RESULTS_URI"}
        (bucket,) = [
            b for b in run.of_type("aws:s3/bucket:Bucket") if b.name.endswith("-flow-results")
        ]
        assert uri.startswith(f"s3://{bucket.name}")
        assert uri.endswith("/prefect-results")
        # Results expire (a crash can be resumed within mlre:flowResultsDays, 14 by default).
        rule = run.named(f"{bucket.name}-lifecycle").inputs["rules"][0]
        assert rule["expiration"] == {"days": 14}
        # The flows' IRSA role may write there (and the Dask workers run under the same one).
        (policy,) = [
            json.loads(r.inputs["policy"]) for r in run.of_type("aws:iam/rolePolicy:RolePolicy")
            if r.name.endswith("-prefect-flows-irsa-policy")
        ]  # fmt: skip
        writes = [st for st in policy["Statement"] if "s3:PutObject" in st["Action"]]
        assert any(f":{bucket.name}" in arn for st in writes for arn in st["Resource"])


@pytest.mark.parametrize("job", ["cpu_job", "gpu_job"])
def test_flow_pods_read_the_dask_defaults_the_stack_writes(
    job: str, request: pytest.FixtureRequest, stack_runs: dict[str, Run]
) -> None:
    manifest = request.getfixturevalue(job)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    source = {"configMapRef": {"name": k8s_labels.FLOWS_DASK_CONFIG_MAP, "optional": True}}
    assert source in container["envFrom"]
    for run in stack_runs.values():
        (config_map,) = [
            r.inputs for r in run.of_type("kubernetes:core/v1:ConfigMap")
            if r.inputs["metadata"]["name"] == k8s_labels.FLOWS_DASK_CONFIG_MAP
        ]  # fmt: skip
        assert config_map["metadata"]["namespace"] == k8s_labels.FLOWS_NAMESPACE
        assert config_map["data"]["MLRE_TASK_RUNNER"] == "dask-kubernetes"

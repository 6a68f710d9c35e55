"""The online prediction service component, asserted like a policy on what the mocks saw."""

from __future__ import annotations

import json
import runpy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.config import InfraConfigError, load_config
from infra.policy.rules import POLICIES
from infra.serving_service import APP, PORT, PREDICTION_PREFIX, serving_workers
from mlre import k8s_labels
from tests.infra.infra_harness import (
    PUBLIC_EXPOSURE,
    ROOT,
    Run,
    manifests,
    run_mocked,
    run_stack,
    stack_config,
    violations,
)

pytestmark = pytest.mark.infra

DECLARED = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
IN_CLUSTER_URL = f"http://{APP}.mlre-platform.svc.cluster.local"


def _objects(run: Run) -> dict[str, dict[str, Any]]:
    """The serving component's Kubernetes objects by kind."""
    found: dict[str, dict[str, Any]] = {}
    for manifest in manifests(run):
        if manifest["metadata"]["name"] in {APP, f"{APP}-secrets"}:
            assert manifest["kind"] not in found, f"two {manifest['kind']} objects named {APP}"
            found[manifest["kind"]] = manifest
    return found


def _container(run: Run) -> dict[str, Any]:
    (container,) = _objects(run)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _config(stack: str, key: str) -> Any:
    return yaml.safe_load(stack_config(stack)[f"mlre:{key}"])


def _policy(run: Run) -> dict[str, Any]:
    (rp,) = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if f"-{APP}-" in r.name]
    return json.loads(rp.inputs["policy"])


def _bucket_arn(run: Run, purpose: str) -> str:
    (bucket,) = [
        b for b in run.of_type("aws:s3/bucket:Bucket") if b.name.endswith(f"-storage-{purpose}")
    ]
    return f"arn:aws:s3:::{bucket.name}-a1b2c3"


def test_component_and_all_its_objects_exist(stack_run: Run) -> None:
    assert stack_run.of_type("mlre:infra:ServingService")
    assert set(_objects(stack_run)) == {
        "ServiceAccount",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


def test_objects_pass_the_kubernetes_schema(stack_run: Run) -> None:
    for manifest in _objects(stack_run).values():
        kubernetes_validate.validate(manifest, "1.33", strict=True)
        assert manifest["metadata"]["namespace"] == "mlre-platform"


def test_deployment_runs_the_service_hardened(stack_run: Run) -> None:
    pod = _objects(stack_run)["Deployment"]["spec"]["template"]["spec"]
    container = _container(stack_run)
    assert container["command"] == ["python", "-m", "serving"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the flows image's USER
    assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "rds-ca", "mountPath": "/etc/rds-ca", "readOnly": True},  # the registry's CA
    ]
    tmp, ca = pod["volumes"]
    assert tmp["name"] == "tmp"
    assert "emptyDir" in tmp
    assert ca == {"name": "rds-ca", "configMap": {"name": "rds-ca"}}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_image_and_resources_come_from_config(stack_runs: dict[str, Run], stack: str) -> None:
    container = _container(stack_runs[stack])
    assert container["image"] == _config(stack, "servingImage")
    memory = _config(stack, "servingMemory")
    assert container["resources"] == {
        "requests": {"cpu": _config(stack, "servingCpuRequest"), "memory": memory},
        "limits": {"memory": memory},
    }


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_workers_match_the_cpu_request(stack_runs: dict[str, Run], stack: str) -> None:
    env = {e["name"]: e["value"] for e in _container(stack_runs[stack])["env"]}
    assert env["MLRE_SERVING_WORKERS"] == str(serving_workers(_config(stack, "servingCpuRequest")))


def test_a_bigger_cpu_request_runs_more_workers() -> None:
    run = run_stack("dev", {"mlre:servingCpuRequest": "2"})
    env = {e["name"]: e["value"] for e in _container(run)["env"]}
    assert env["MLRE_SERVING_WORKERS"] == "2"
    assert _container(run)["resources"]["requests"]["cpu"] == "2"


@pytest.mark.parametrize(
    ("cpu_request", "workers"),
    [("250m", 1), ("500m", 1), ("1", 1), ("1500m", 1), ("2", 2), ("2.5", 2), ("4000m", 4)],
)
def test_one_worker_per_whole_core_and_at_least_one(cpu_request: str, workers: int) -> None:
    assert serving_workers(cpu_request) == workers


def test_workers_metrics_dir_is_on_a_writable_empty_dir(stack_run: Run) -> None:
    # `python -m serving` keeps its workers' Prometheus files under MLRE_HOME/run; the root
    # filesystem is read-only, so MLRE_HOME must be on a writable emptyDir mount.
    pod = _objects(stack_run)["Deployment"]["spec"]["template"]["spec"]
    container = _container(stack_run)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    home = {e["name"]: e["value"] for e in container["env"]}["MLRE_HOME"]
    (mount,) = [
        m for m in container["volumeMounts"] if home.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert not mount.get("readOnly", False)
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


def test_probes_hit_healthz_and_readyz(stack_run: Run) -> None:
    container = _container(stack_run)
    assert container["ports"] == [{"name": "http", "containerPort": PORT}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_pods_are_scraped_by_prometheus(stack_run: Run) -> None:
    annotations = _objects(stack_run)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    annotations.pop("mlre.io/db-credentials")  # rolls the pods when the database role rotates
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
    }


def test_env_selects_production_profile_and_secrets_come_from_the_secret(stack_run: Run) -> None:
    container = _container(stack_run)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLRE_HOST"] == "0.0.0.0"  # settings.host defaults to loopback
    assert env["MLRE_SERVING_PORT"] == str(PORT)
    assert env["MLRE_STORE_PROFILE"] == "production"
    assert env["MLRE_MLFLOW_URI"] == "http://mlflow.mlre-platform.svc.cluster.local"
    assert (
        env["MLRE_OFFLINE_URI"] == "s3://" + _bucket_arn(stack_run, "feature-lake").split(":")[-1]
    )
    assert env["MLRE_HOME"].startswith("/tmp/")  # on the emptyDir, the root FS is read-only
    assert not any("password" in value or "postgresql" in value for value in env.values())
    assert container["envFrom"] == [{"secretRef": {"name": f"{APP}-secrets"}}]
    data = _objects(stack_run)["Secret"]["stringData"]
    assert set(data) == {
        "MLRE_REGISTRY_URI",
        "MLRE_REDIS_CONNECTION_STRING",
        "MLFLOW_TRACKING_PASSWORD",
    }
    assert data["MLRE_REGISTRY_URI"].startswith("postgresql+psycopg://")
    assert "sslmode=verify-full" in data["MLRE_REGISTRY_URI"]
    assert data["MLRE_REDIS_CONNECTION_STRING"].endswith("ssl=true,password=" + "p" * 48)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_hpa_bounds_and_cpu_target_come_from_config(stack_runs: dict[str, Run], stack: str) -> None:
    objects = _objects(stack_runs[stack])
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": APP,
    }
    assert hpa["spec"]["minReplicas"] == _config(stack, "servingReplicasMin")
    assert hpa["spec"]["maxReplicas"] == _config(stack, "servingReplicasMax")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": _config(stack, "servingCpuTarget"),
    }
    assert "replicas" not in objects["Deployment"]["spec"]  # the HPA owns the count


def test_prod_serves_with_more_replicas_than_dev(stack_runs: dict[str, Run]) -> None:
    dev, prod = (
        _objects(stack_runs[s])["HorizontalPodAutoscaler"]["spec"] for s in ("dev", "prod")
    )
    assert prod["minReplicas"] > dev["minReplicas"] >= 2
    assert prod["maxReplicas"] > dev["maxReplicas"]


def test_pdb_keeps_one_pod_and_selects_the_deployment(stack_run: Run) -> None:
    objects = _objects(stack_run)
    pdb = objects["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] > 1  # drains can proceed


def test_service_account_carries_the_irsa_role(stack_run: Run) -> None:
    sa = _objects(stack_run)["ServiceAccount"]
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert arn == stack_run.outputs["serving_role_arn"]
    assert arn.startswith("arn:aws:iam")
    assert (
        _objects(stack_run)["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"]
        == (sa["metadata"]["name"])
    )
    (role,) = [r for r in stack_run.of_type("aws:iam/role:Role") if f"-{APP}-" in r.name]
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
    subjects = [v for k, v in trust["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert subjects == [f"system:serviceaccount:mlre-platform:{APP}"]


def test_irsa_policy_is_least_privilege(stack_run: Run) -> None:
    statements = _policy(stack_run)["Statement"]
    lake, registry = (_bucket_arn(stack_run, p) for p in ("feature-lake", "feast-registry"))
    log_bucket = _bucket_arn(stack_run, "prediction-log")
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not any("*" in action for action in statement["Action"])
        assert "*" not in statement["Resource"]
        for resource in statement["Resource"]:
            assert resource.split(":")[-1] != "*"
    s3_resources = {
        r for s in statements for r in s["Resource"] if r.startswith("arn:aws:s3:::")
    }  # fmt: skip
    assert {r.split("/")[0] for r in s3_resources} == {lake, registry, log_bucket}
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert writes == [
        {
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:PutObject"],
            "Resource": [f"{log_bucket}/{PREDICTION_PREFIX}/*"],
        }
    ]
    deletes = [a for s in statements for a in s["Action"] if "Delete" in a]
    assert not deletes
    reads = {r for s in statements if "s3:GetObject" in s["Action"] for r in s["Resource"]}
    assert reads == {f"{lake}/*", f"{registry}/*"}
    (kms,) = [s for s in statements if any(a.startswith("kms:") for a in s["Action"])]
    (key_arn,) = kms["Resource"]
    assert key_arn.startswith("arn:aws:kms:")


def test_prediction_log_goes_to_the_bucket_prefix_the_role_may_write(stack_run: Run) -> None:
    env = {e["name"]: e["value"] for e in _container(stack_run)["env"]}
    log_bucket = _bucket_arn(stack_run, "prediction-log")
    uri = env["MLRE_PREDICTION_LOG_URI"]
    # Region given: pyarrow asks S3 nothing (HeadBucket needs a permission the role lacks).
    assert uri == f"s3://{log_bucket.split(':')[-1]}?region={stack_run.outputs['region']}"
    assert stack_run.outputs["prediction_log_uri"] == uri  # the flows read it from there
    # The service writes `<uri>/predictions/<model>/part-*.parquet`: inside the granted prefix.
    writes = [s for s in _policy(stack_run)["Statement"] if "s3:PutObject" in s["Action"]]
    assert [s["Resource"] for s in writes] == [[f"{log_bucket}/{PREDICTION_PREFIX}/*"]]


def test_irsa_policy_passes_the_policy_pack(stack_run: Run) -> None:
    (rp,) = [r for r in stack_run.of_type("aws:iam/rolePolicy:RolePolicy") if f"-{APP}-" in r.name]
    for policy in POLICIES:
        assert violations(policy, rp.typ, rp.inputs) == [], policy.name


def test_service_is_cluster_ip_and_url_in_cluster_by_default(stack_run: Run) -> None:
    service = _objects(stack_run)["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert stack_run.outputs["serving_url"] == IN_CLUSTER_URL


def test_service_stays_in_cluster_when_mlflow_and_feast_are_published() -> None:
    run = run_stack("dev", PUBLIC_EXPOSURE)
    # /predict and /metrics have no authentication: never behind a public load balancer.
    assert _objects(run)["Service"]["spec"]["type"] == "ClusterIP"
    assert run.outputs["serving_url"] == IN_CLUSTER_URL
    # MLflow is public, but model downloads stay inside the cluster.
    env = {e["name"]: e["value"] for e in _container(run)["env"]}
    assert env["MLRE_MLFLOW_URI"] == "http://mlflow.mlre-platform.svc.cluster.local"


def test_entrypoint_exports_serving_url() -> None:
    from pulumi.runtime import settings

    run_mocked(lambda: runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__"))
    outputs = settings.get_root_resource().outputs
    assert {"serving_url", "serving_role_arn"} <= set(outputs)


def test_serving_keys_are_declared_and_the_image_has_no_default() -> None:
    for key in ("servingReplicasMin", "servingReplicasMax", "servingCpuTarget",
                "servingCpuRequest", "servingMemory"):  # fmt: skip
        spec = DECLARED[f"mlre:{key}"]
        assert "default" in spec
        assert spec["description"]
        assert spec["type"] in {"string", "integer"}
    assert "default" not in DECLARED["mlre:servingImage"]  # no public image to default to


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mlre:servingReplicasMin": 1}, "servingReplicasMin must be >= 2"),
        ({"mlre:servingReplicasMin": 5, "mlre:servingReplicasMax": 3}, "servingReplicasMax"),
        ({"mlre:servingCpuTarget": 0}, "servingCpuTarget"),
        ({"mlre:servingCpuTarget": 150}, "servingCpuTarget"),
        ({"mlre:servingCpuRequest": "two"}, "servingCpuRequest is 'two'"),
        ({"mlre:servingCpuRequest": "0m"}, "servingCpuRequest"),
    ],
)
def test_bad_serving_bounds_fail_with_the_key_named(overrides: dict, message: str) -> None:
    with pytest.raises(InfraConfigError, match=message):
        run_mocked(load_config, stack="dev", config=stack_config("dev", overrides))

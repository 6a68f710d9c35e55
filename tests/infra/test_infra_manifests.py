"""Every Kubernetes object the program declares passes the 1.33 schema and is hardened."""

from __future__ import annotations

import kubernetes_validate
import pytest

from mlre import k8s_labels
from tests.infra.infra_harness import Run, manifests, runs_prefect_server

pytestmark = pytest.mark.infra

K8S_VERSION = "1.33"


def _deployments(run: Run) -> list[dict]:
    return [m for m in manifests(run) if m["kind"] == "Deployment"]


def test_manifest_is_valid_kubernetes(stack_run: Run, subtests: pytest.Subtests) -> None:
    # The stacks run in a session fixture, never at collection, so the manifests cannot be
    # parametrize cases: each is a subtest instead, and a failure names its manifest.
    declared = manifests(stack_run)
    assert declared, "the program declared no Kubernetes objects"
    for manifest in declared:
        with subtests.test(msg=f"{manifest['kind']}-{manifest['metadata']['name']}"):
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_schema_check_can_fail() -> None:
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": "eighty"}]}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_expected_objects_exist(stack_runs: dict[str, Run]) -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for m in manifests(stack_runs["dev"])}
    assert {
        ("Namespace", "mlre-platform"),
        ("Namespace", k8s_labels.FLOWS_NAMESPACE),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("Deployment", "feast"),
        ("Service", "feast"),
        ("ConfigMap", "feast-config"),
        ("HorizontalPodAutoscaler", "feast"),
        ("Deployment", f"prefect-worker-{k8s_labels.CPU_WORK_POOL}"),
        ("Deployment", f"prefect-worker-{k8s_labels.GPU_WORK_POOL}"),
        ("ServiceAccount", k8s_labels.FLOWS_SERVICE_ACCOUNT),
        ("Role", "prefect-worker"),
        ("RoleBinding", "prefect-worker"),
    } <= kinds


def test_deployments_are_non_root_probed_and_sized(stack_run: Run) -> None:
    deployments = _deployments(stack_run)
    # mlflow, feast, serving, two Prefect workers, alert relay (+ the Prefect server in dev)
    assert len(deployments) == 6 + runs_prefect_server(stack_run)
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["limits"]["memory"]
            assert container["livenessProbe"]
            assert container["readinessProbe"]


def test_mlflow_runs_basic_auth_with_secrets_from_env(stack_runs: dict[str, Run]) -> None:
    (mlflow,) = [d for d in _deployments(stack_runs["dev"]) if d["metadata"]["name"] == "mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    assert any(a.startswith("--artifacts-destination=s3://") for a in container["args"])
    assert not any("postgresql" in a for a in container["args"])  # password never in argv
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert "secretKeyRef" in env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]


def test_feast_config_is_production_shaped_without_secrets(stack_runs: dict[str, Run]) -> None:
    (config,) = [m for m in manifests(stack_runs["dev"]) if m["kind"] == "ConfigMap"
                 and m["metadata"]["name"] == "feast-config"]  # fmt: skip
    text = config["data"]["feature_store.yaml"]
    assert "registry_type: sql" in text
    assert "type: redis" in text
    assert "${FEAST_REDIS_CONNECTION}" in text
    assert "password" not in text
    (secret,) = [m for m in manifests(stack_runs["dev"])
                 if m["kind"] == "Secret" and m["metadata"]["name"] == "feast-secrets"]  # fmt: skip
    assert secret["stringData"]["FEAST_REDIS_CONNECTION"].endswith("ssl=true,password=" + "p" * 48)
    assert "sslmode=verify-full" in secret["stringData"]["FEAST_REGISTRY_URL"]


def test_feast_hpa_targets_the_deployment(stack_runs: dict[str, Run]) -> None:
    for run in stack_runs.values():
        (hpa,) = [m for m in manifests(run) if m["kind"] == "HorizontalPodAutoscaler"
                  and m["metadata"]["name"] == "feast"]  # fmt: skip
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == "feast"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_prefect_workers_poll_each_pool_with_a_secret_key(stack_runs: dict[str, Run]) -> None:
    # prod brings Prefect Cloud (an API key); dev runs its own server (test_prefect_server.py).
    workers = [d for d in _deployments(stack_runs["prod"])
               if d["metadata"]["name"].startswith("prefect-worker")]  # fmt: skip
    pools = set()
    for worker in workers:
        container = worker["spec"]["template"]["spec"]["containers"][0]
        args = container["args"]
        assert args[:3] == ["prefect", "worker", "start"]
        assert args[args.index("--type") + 1] == "kubernetes"
        pools.add(args[args.index("--pool") + 1])
        env = {e["name"]: e for e in container["env"]}
        assert env["PREFECT_API_URL"]["value"].startswith("https://")
        assert "secretKeyRef" in env["PREFECT_API_KEY"]["valueFrom"]
        assert worker["metadata"]["namespace"] == k8s_labels.FLOWS_NAMESPACE
    assert pools == {k8s_labels.CPU_WORK_POOL, k8s_labels.GPU_WORK_POOL}


def test_worker_rbac_can_run_jobs_but_nothing_cluster_wide(stack_runs: dict[str, Run]) -> None:
    run = stack_runs["dev"]
    (role,) = [m for m in manifests(run) if m["kind"] == "Role"
               and m["metadata"]["name"] == "prefect-worker"]  # fmt: skip
    assert role["metadata"]["namespace"] == k8s_labels.FLOWS_NAMESPACE
    jobs = next(r for r in role["rules"] if r["resources"] == ["jobs"])
    assert "create" in jobs["verbs"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    # The one cluster-wide grant: Feast's token reviews (tests/infra/test_feast_auth.py).
    cluster_wide = [m for m in manifests(run) if m["kind"].startswith("Cluster")]
    assert {m["kind"] for m in cluster_wide} == {"ClusterRole", "ClusterRoleBinding"}
    assert {m["metadata"]["name"] for m in cluster_wide} == {"mlre-platform-feast-token-review"}


def test_flows_service_account_is_irsa_annotated(stack_runs: dict[str, Run]) -> None:
    (sa,) = [m for m in manifests(stack_runs["dev"]) if m["kind"] == "ServiceAccount"
             and m["metadata"]["name"] == k8s_labels.FLOWS_SERVICE_ACCOUNT]  # fmt: skip
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam")

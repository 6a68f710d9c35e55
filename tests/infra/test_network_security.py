"""Issue 19, findings 2 and 5: NetworkPolicies allow exactly the design's paths, and what is
published is TLS-only, CIDR-bound and never the prediction service.

The policies are the ones the program renders (mocked run of each stack), evaluated with
Kubernetes' NetworkPolicy semantics (tests/infra/netpol.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from infra import network_policies
from infra.config import InfraConfigError
from infra.policy import rules
from infra.policy.selectors import selects_pod
from mlre import k8s_labels
from tests.infra.infra_harness import (
    PUBLIC_EXPOSURE,
    Run,
    manifests,
    recorded,
    run_stack,
    stack_violations,
    violations,
)
from tests.infra.netpol import Pod, allowed

pytestmark = pytest.mark.infra

PLATFORM, FLOWS, MONITORING = "mlre-platform", k8s_labels.FLOWS_NAMESPACE, "mlre-monitoring"
IN_VPC = "10.40.12.34"  # RDS / ElastiCache addresses are in the dev VPC (10.40.0.0/16)
S3 = "52.216.0.10"
CLIENT = "203.0.113.7"  # inside PUBLIC_EXPOSURE's source CIDR
STRANGER = "198.51.100.1"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


def _policies(run: Run) -> list[dict[str, Any]]:
    return [m for m in manifests(run) if m["kind"] == "NetworkPolicy"]


def _pods(run: Run) -> dict[str, Pod]:
    """Each declared Deployment's pods, by Deployment name, with their template labels."""
    return {
        m["metadata"]["name"]: Pod(
            m["metadata"]["namespace"], m["spec"]["template"]["metadata"]["labels"]
        )
        for m in manifests(run)
        if m["kind"] == "Deployment"
    }


@pytest.fixture(scope="module")
def dev(stack_runs: dict[str, Run]) -> tuple[list[dict[str, Any]], dict[str, Pod]]:
    run = stack_runs["dev"]
    pods = _pods(run)
    pods |= {
        "flow-run": Pod(FLOWS, {"prefect.io/flow-run-id": "0b5c"}),
        "prometheus": Pod(MONITORING, network_policies.PROMETHEUS_PODS),
        "alertmanager": Pod(MONITORING, network_policies.ALERTMANAGER_PODS),
        "grafana": Pod(MONITORING, {"app.kubernetes.io/name": "grafana"}),
        "pushgateway": Pod(
            MONITORING,
            {
                "app.kubernetes.io/name": "prometheus-pushgateway",
                "app.kubernetes.io/instance": "pushgateway",
            },
        ),
        "operator": Pod(MONITORING, network_policies.OPERATOR_PODS),
        "other-team": Pod("team-a", {"app": "web"}),
        "kube-dns": Pod("kube-system", {"k8s-app": "kube-dns"}),
    }
    return _policies(run), pods


ALLOWED = [
    ("serving", "mlflow", 5000),
    ("serving", IN_VPC, 5432),  # the Feast SQL registry (read-only role)
    ("serving", IN_VPC, 6379),
    ("serving", S3, 443),
    ("mlflow", IN_VPC, 5432),
    ("feast", IN_VPC, 6379),
    ("flow-run", "mlflow", 5000),
    ("flow-run", "feast", 6566),
    ("flow-run", "serving", 8000),
    ("flow-run", "pushgateway", 9091),
    ("flow-run", "prometheus", 9090),
    ("prefect-worker-k8s-cpu", S3, 443),  # Prefect's API and the EKS API are HTTPS
    ("prometheus", "serving", 8000),
    ("prometheus", "alert-relay", 9096),
    ("alertmanager", "alert-relay", 9096),
    ("grafana", "prometheus", 9090),
    ("other-team", "serving", 8000),  # in-cluster clients of /predict
    (IN_VPC, "operator", 10250),  # the API server calls the operator's admission webhook
]

DENIED = [
    ("serving", "feast", 6566),  # the service reads Redis directly, never the feature server
    ("serving", "pushgateway", 9091),
    ("serving", S3, 22),
    ("serving", IN_VPC, 22),
    ("mlflow", IN_VPC, 6379),  # MLflow has no business with Redis
    ("mlflow", "feast", 6566),
    ("flow-run", "alert-relay", 9096),  # only Alertmanager posts alerts
    ("grafana", "alert-relay", 9096),
    ("flow-run", "grafana", 3000),
    ("other-team", "mlflow", 5000),
    ("other-team", "feast", 6566),
    ("other-team", "pushgateway", 9091),
    (CLIENT, "mlflow", 5000),  # nothing is published by default
    (STRANGER, "serving", 8000),
]


def _end(pods: dict[str, Pod], name: str) -> Pod | str:
    return pods.get(name, name)


@pytest.mark.parametrize(("source", "target", "port"), ALLOWED)
def test_design_paths_are_open(dev: Any, source: str, target: str, port: int) -> None:
    policies, pods = dev
    assert allowed(policies, _end(pods, source), _end(pods, target), port)


@pytest.mark.parametrize(("source", "target", "port"), DENIED)
def test_everything_else_is_refused(dev: Any, source: str, target: str, port: int) -> None:
    policies, pods = dev
    assert not allowed(policies, _end(pods, source), _end(pods, target), port)


def test_egress_denied_pods_still_resolve_names(dev: Any) -> None:
    policies, pods = dev
    for name in ("serving", "mlflow", "feast", "flow-run"):
        assert allowed(policies, pods[name], pods["kube-dns"], 53, "UDP")


def test_every_workload_is_selected_by_ingress_and_egress_policies(stack_run: Run) -> None:
    policies = _policies(stack_run)
    egress_denied = {PLATFORM, FLOWS}
    workloads = [m for m in manifests(stack_run) if m["kind"] in WORKLOAD_KINDS]
    assert len(workloads) >= 5
    for workload in workloads:
        namespace = workload["metadata"]["namespace"]
        template = (
            workload["spec"].get("template") or workload["spec"]["jobTemplate"]["spec"]["template"]
        )
        labels = template["metadata"].get("labels") or {}
        directions = {
            t
            for p in policies
            if p["metadata"]["namespace"] == namespace
            for t in p["spec"]["policyTypes"]
            if selects_pod(p, namespace, labels)
        }
        expected = {"Ingress", "Egress"} if namespace in egress_denied else {"Ingress"}
        assert directions >= expected, workload["metadata"]["name"]


def test_vpc_cni_enforces_network_policies(stack_run: Run) -> None:
    (cni,) = [
        a for a in stack_run.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni"
    ]
    assert '"enableNetworkPolicy": "true"' in cni.inputs["configurationValues"]


def test_network_policy_rule_passes_our_stacks_and_fails_an_unselected_workload(
    stack_runs: dict[str, Run],
) -> None:
    (policy,) = [p for p in rules.STACK_POLICIES if p.name == "workloads-have-network-policy"]
    for run in stack_runs.values():
        assert not stack_violations(policy, recorded(run))
    stray = {
        "metadata": {"name": "stray", "namespace": "team-a"},
        "spec": {"template": {"metadata": {"labels": {"app": "stray"}}, "spec": {}}},
    }
    found = stack_violations(
        policy, [*recorded(stack_runs["dev"]), ("kubernetes:apps/v1:Deployment", "stray", stray)]
    )
    assert found == [
        "Deployment stray in team-a is selected by no NetworkPolicy: add one "
        "(infra/network_policies.py)"
    ]


def test_a_path_renders_both_of_its_halves() -> None:
    restricted = {ns.name: ns for ns in (
        network_policies.NamespacePolicy("a", deny_egress=True),
        network_policies.NamespacePolicy("b", deny_egress=False),
    )}  # fmt: skip
    path = network_policies.Path(
        "x", network_policies.Pods("a", {"app": "x"}), network_policies.Pods("b", {"app": "y"}), 80
    )
    out, into = network_policies.path_policies(path, restricted)
    assert (out["metadata"]["namespace"], into["metadata"]["namespace"]) == ("a", "b")
    assert out["spec"]["egress"][0]["ports"] == into["spec"]["ingress"][0]["ports"]
    # Egress is only written where it is denied: the reverse path needs only its ingress half.
    reverse = network_policies.Path("y", path.target, path.source, 80)
    assert [p["metadata"]["name"] for p in network_policies.path_policies(reverse, restricted)] == [
        "y-in"
    ]


# --- finding 5: what is public ---------------------------------------------------------------


@pytest.fixture(scope="module")
def public_run() -> Run:
    return run_stack("dev", PUBLIC_EXPOSURE)


def test_published_services_are_tls_only_and_cidr_bound(public_run: Run) -> None:
    services = {m["metadata"]["name"]: m for m in manifests(public_run) if m["kind"] == "Service"}
    for app in ("mlflow", "feast"):
        service = services[app]
        annotations = service["metadata"]["annotations"]
        assert (
            annotations[f"{rules.LB_ANNOTATION}-ssl-cert"]
            == PUBLIC_EXPOSURE["mlre:publicCertificateArn"]
        )
        assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "http"}]
        assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
        assert annotations["external-dns.alpha.kubernetes.io/hostname"] == f"{app}.ml.example.com"
        assert public_run.outputs[f"{'feast_feature_server' if app == 'feast' else app}_url"] == (
            f"https://{app}.ml.example.com"
        )
    assert services["serving"]["spec"]["type"] == "ClusterIP"
    assert services["alert-relay"]["spec"]["type"] == "ClusterIP"


def test_published_services_admit_listed_clients_only(public_run: Run) -> None:
    policies, pods = _policies(public_run), _pods(public_run)
    assert allowed(policies, CLIENT, pods["mlflow"], 5000)
    assert allowed(policies, CLIENT, pods["feast"], 6566)
    assert not allowed(policies, STRANGER, pods["mlflow"], 5000)
    assert not allowed(policies, CLIENT, pods["serving"], 8000)


def test_mlflow_keeps_its_host_check_when_published(public_run: Run) -> None:
    (mlflow,) = [m for m in manifests(public_run)
                 if m["kind"] == "Deployment" and m["metadata"]["name"] == "mlflow"]  # fmt: skip
    (hosts,) = [a for a in mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
                if a.startswith("--allowed-hosts=")]  # fmt: skip
    allowed_hosts = hosts.removeprefix("--allowed-hosts=").split(",")
    assert "*" not in allowed_hosts
    assert "mlflow.ml.example.com" in allowed_hosts


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ({"mlre:publicDomain": ""}, "mlre:publicDomain"),
        ({"mlre:publicCertificateArn": ""}, "mlre:publicCertificateArn"),
        ({"mlre:publicCertificateArn": "arn:aws:iam::123456789012:role/x"}, "publicCertificateArn"),
        ({"mlre:publicSourceCidrs": []}, "mlre:publicSourceCidrs"),
        ({"mlre:publicSourceCidrs": ["0.0.0.0/0"]}, "never 0.0.0.0/0"),
        ({"mlre:publicSourceCidrs": ["not-a-cidr"]}, "mlre:publicSourceCidrs holds"),
    ],
)
def test_public_exposure_refuses_plain_http_and_open_ranges(
    override: dict[str, Any], names: str
) -> None:
    with pytest.raises(InfraConfigError, match=names):
        run_stack("dev", {**PUBLIC_EXPOSURE, **override})


@pytest.mark.parametrize(
    "change",
    [
        {"metadata": {"annotations": {}}},
        {
            "spec": {
                "type": "LoadBalancer",
                "ports": [{"name": "http", "port": 80}],
                "loadBalancerSourceRanges": ["203.0.113.0/24"],
            }
        },
        {
            "spec": {
                "type": "LoadBalancer",
                "ports": [{"name": "https", "port": 443}],
                "loadBalancerSourceRanges": ["0.0.0.0/0"],
            }
        },
    ],
)
def test_public_service_rule_refuses_plain_or_open_load_balancers(
    public_run: Run, change: dict[str, Any]
) -> None:
    (good,) = [r.inputs for r in public_run.of_type(rules.SERVICE_TYPE)
               if r.inputs["metadata"]["name"] == "mlflow"]  # fmt: skip
    policy = next(p for p in rules.POLICIES if p.name == "public-service-tls")
    assert not violations(policy, rules.SERVICE_TYPE, good)
    bad = {key: {**good[key], **change.get(key, {})} for key in ("metadata", "spec")}
    assert violations(policy, rules.SERVICE_TYPE, bad)


def test_only_the_user_sync_job_and_clients_reach_mlflow(dev: Any) -> None:
    policies, pods = dev
    sync = Pod(PLATFORM, {"app.kubernetes.io/name": "mlflow-user-sync"})
    assert allowed(policies, sync, pods["mlflow"], 5000)
    assert not allowed(policies, sync, IN_VPC, 5432)  # it talks to MLflow, not to its database

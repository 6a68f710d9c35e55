"""NetworkPolicies: every namespace of ours denies by default; one list of paths opens the rest.

A `Path` says "these pods open TCP `port` on those pods (or CIDRs)". From the one list this
module writes both ends: an egress rule in the source's namespace (where egress is denied) and an
ingress rule in the target's namespace. Enforced by the VPC CNI's network-policy agent
(`ClusterAddons` turns it on).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import (
    alert_relay,
    dask_operator,
    db_bootstrap,
    feast_service,
    mlflow_service,
    mlflow_user,
    monitoring,
    prefect_server,
    serving_service,
)
from infra.k8s import ClusterAccess
from infra.policy.selectors import NAMESPACE_NAME_LABEL

ANYWHERE = "0.0.0.0/0"
DNS_PORT = 53
HTTPS_PORT = 443
KUBE_DNS = {NAMESPACE_NAME_LABEL: "kube-system"}, {"k8s-app": "kube-dns"}


@dataclass(frozen=True)
class Pods:
    """Pods by namespace and labels; no labels is every pod, namespace None is every namespace."""

    namespace: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    unless: Mapping[str, str] = field(default_factory=dict)  # label values that exclude a pod

    def selector(self) -> dict[str, Any]:
        """The pod LabelSelector."""
        selector: dict[str, Any] = {"match_labels": dict(self.labels)}
        if self.unless:
            selector["match_expressions"] = [
                {"key": key, "operator": "NotIn", "values": [value]}
                for key, value in self.unless.items()
            ]
        return selector

    def peer(self) -> dict[str, Any]:
        """A NetworkPolicyPeer selecting these pods from any namespace's policy."""
        namespaces = {} if self.namespace is None else {NAMESPACE_NAME_LABEL: self.namespace}
        return {"namespace_selector": {"match_labels": namespaces}, "pod_selector": self.selector()}


@dataclass(frozen=True)
class Path:
    """One allowed connection: `source` opens TCP `port` on `target` (pods, or CIDR blocks)."""

    name: str
    source: Pods | tuple[str, ...]
    target: Pods | tuple[str, ...]
    port: int | None  # None: every port (only for paths inside one namespace)


@dataclass(frozen=True)
class NamespacePolicy:
    """A namespace of ours: ingress is always denied by default; egress too when `deny_egress`."""

    name: str
    deny_egress: bool


def _ip_peers(cidrs: Sequence[str]) -> list[dict[str, Any]]:
    """NetworkPolicyPeers for CIDR blocks."""
    return [{"ip_block": {"cidr": cidr}} for cidr in cidrs]


def _peers(end: Pods | tuple[str, ...]) -> list[dict[str, Any]]:
    """The peers one end of a path stands for."""
    return [end.peer()] if isinstance(end, Pods) else _ip_peers(end)


def default_deny(ns: NamespacePolicy) -> dict[str, Any]:
    """Every pod of the namespace: no traffic in (and out) unless another policy allows it."""
    types = ["Ingress", "Egress"] if ns.deny_egress else ["Ingress"]
    return _manifest("default-deny", ns.name, {}, {"policy_types": types})


def dns_egress(ns: NamespacePolicy) -> dict[str, Any]:
    """Every pod of an egress-denied namespace may still resolve names with the cluster DNS."""
    namespaces, pods = KUBE_DNS
    peer = {
        "namespace_selector": {"match_labels": namespaces},
        "pod_selector": {"match_labels": pods},
    }
    ports = [{"protocol": proto, "port": DNS_PORT} for proto in ("UDP", "TCP")]
    spec = {"policy_types": ["Egress"], "egress": [{"to": [peer], "ports": ports}]}
    return _manifest("allow-dns", ns.name, {}, spec)


def _manifest(
    name: str, namespace: str, pods: Mapping[str, Any], spec: Mapping[str, Any]
) -> dict[str, Any]:
    """A networking.k8s.io/v1 NetworkPolicy manifest (snake_case, as Pulumi takes it)."""
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"pod_selector": dict(pods) or {"match_labels": {}}, **spec},
    }


def path_policies(path: Path, restricted: Mapping[str, NamespacePolicy]) -> list[dict[str, Any]]:
    """The egress half (source namespace denies egress) and ingress half (target is ours)."""
    ports = {} if path.port is None else {"ports": [{"protocol": "TCP", "port": path.port}]}
    out = []
    source, target = path.source, path.target
    source_ns = restricted.get(source.namespace) if isinstance(source, Pods) else None
    if isinstance(source, Pods) and source_ns is not None and source_ns.deny_egress:
        rule = {"to": _peers(target), **ports}
        spec = {"policy_types": ["Egress"], "egress": [rule]}
        out.append(_manifest(f"{path.name}-out", source_ns.name, source.selector(), spec))
    if isinstance(target, Pods) and target.namespace in restricted:
        rule = {"from": _peers(source), **ports}
        spec = {"policy_types": ["Ingress"], "ingress": [rule]}
        out.append(_manifest(f"{path.name}-in", target.namespace, target.selector(), spec))
    return out


def render(namespaces: Iterable[NamespacePolicy], paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every NetworkPolicy manifest: defaults per namespace, then both halves of every path."""
    restricted = {ns.name: ns for ns in namespaces}
    manifests = [default_deny(ns) for ns in restricted.values()]
    manifests += [dns_egress(ns) for ns in restricted.values() if ns.deny_egress]
    for path in paths:
        manifests += path_policies(path, restricted)
    names = [(m["metadata"]["namespace"], m["metadata"]["name"]) for m in manifests]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two network paths render the same policy name: {duplicates}")
    return manifests


# Pods the kube-prometheus-stack chart and its operator run (their own labels, not ours).
PROMETHEUS_PODS = {"app.kubernetes.io/name": "prometheus"}
ALERTMANAGER_PODS = {"app.kubernetes.io/name": "alertmanager"}
OPERATOR_PODS = {"app": "kube-prometheus-stack-operator"}
OPERATOR_WEBHOOK_PORT = 10250  # the API server calls the operator's admission webhook here
POSTGRES_PORT = 5432
REDIS_PORT = 6379


@dataclass(frozen=True)
class Layout:
    """Where the design's pods and data services are: the inputs of `design_paths`."""

    platform_namespace: str
    flows_namespace: str
    monitoring_namespace: str
    vpc_cidr: str  # RDS, ElastiCache, the EKS API endpoints and the load balancers live here
    db_admin_namespace: str  # the database roles Job (master credential), nothing else
    dask_operator_namespace: str  # the Dask operator; its DaskClusters run in flows_namespace
    public_cidrs: tuple[str, ...] = ()  # who may reach MLflow/Feast through their load balancer
    prefect_server: bool = False  # the in-cluster Prefect server runs (mlre:prefectServer)


def design_paths(layout: Layout) -> list[Path]:
    """Every connection the platform needs; anything else between our pods is refused."""
    platform, flows, mon = (
        layout.platform_namespace,
        layout.flows_namespace,
        layout.monitoring_namespace,
    )
    vpc, internet = (layout.vpc_cidr,), (ANYWHERE,)
    mlflow = Pods(platform, {"app.kubernetes.io/name": mlflow_service.APP})
    feast = Pods(platform, {"app.kubernetes.io/name": feast_service.APP})
    serving = Pods(platform, {"app.kubernetes.io/name": serving_service.APP})
    relay = Pods(mon, {"app.kubernetes.io/name": alert_relay.APP})
    user_sync = Pods(platform, {"app.kubernetes.io/name": mlflow_user.APP})
    roles_job = Pods(layout.db_admin_namespace, {"app.kubernetes.io/name": db_bootstrap.APP})
    flow_pods = Pods(flows)  # the workers and every flow-run Job
    prometheus, alertmanager = Pods(mon, PROMETHEUS_PODS), Pods(mon, ALERTMANAGER_PODS)
    pushgateway = Pods(mon, monitoring.pushgateway_target(mon).labels)
    paths = [
        # Data services (RDS, ElastiCache) sit in the VPC's private subnets.
        *(
            Path(f"{p}-to-postgres", pods, vpc, POSTGRES_PORT)
            for p, pods in (
                ("mlflow", mlflow),
                ("feast", feast),
                ("serving", serving),
                ("flows", flow_pods),
                ("db-roles", roles_job),
            )
        ),
        *(
            Path(f"{p}-to-redis", pods, vpc, REDIS_PORT)
            for p, pods in (("feast", feast), ("serving", serving), ("flows", flow_pods))
        ),
        # S3, STS (IRSA), the EKS API, Prefect's API: HTTPS to AWS endpoints and the internet.
        *(
            Path(f"{p}-to-https", pods, internet, HTTPS_PORT)
            for p, pods in (
                ("mlflow", mlflow),
                ("feast", feast),
                ("serving", serving),
                ("flows", flow_pods),
            )
        ),
        # Models and the registry over MLflow's API; features over Feast's.
        Path("serving-to-mlflow", serving, mlflow, mlflow_service.PORT),
        # The Job that creates the read-only `serving` MLflow user, through MLflow's API.
        Path("mlflow-user-sync-to-mlflow", user_sync, mlflow, mlflow_service.PORT),
        Path("flows-to-mlflow", flow_pods, mlflow, mlflow_service.PORT),
        Path("flows-to-feast", flow_pods, feast, feast_service.PORT),
        Path("flows-to-serving", flow_pods, serving, serving_service.PORT),
        # The canary and health checks call the service; any in-cluster client may.
        Path("clients-to-serving", Pods(None), serving, serving_service.PORT),
        # Batch SLIs are pushed; the canary and `mlre slo status` query Prometheus.
        Path("flows-to-pushgateway", flow_pods, pushgateway, monitoring.PUSHGATEWAY_PORT),
        Path("flows-to-prometheus", flow_pods, prometheus, monitoring.PROMETHEUS_PORT),
        # Monitoring talks to itself freely, except to the relay: only Alertmanager posts alerts
        # there and only Prometheus scrapes it.
        Path(
            "monitoring-internal",
            Pods(mon),
            Pods(mon, unless={"app.kubernetes.io/name": alert_relay.APP}),
            None,
        ),
        Path("alertmanager-to-relay", alertmanager, relay, alert_relay.PORT),
        Path("prometheus-to-relay", prometheus, relay, alert_relay.PORT),
        Path("apiserver-to-operator", vpc, Pods(mon, OPERATOR_PODS), OPERATOR_WEBHOOK_PORT),
        *dask_paths(flows, layout.dask_operator_namespace),
    ]
    if layout.public_cidrs:
        # The load balancers forward from the configured clients via the nodes (VPC addresses).
        sources = (*layout.public_cidrs, layout.vpc_cidr)
        paths += [
            Path("public-to-mlflow", sources, mlflow, mlflow_service.PORT),
            Path("public-to-feast", sources, feast, feast_service.PORT),
        ]
    if layout.prefect_server:
        paths += prefect_server_paths(layout, relay)
    return paths


def prefect_server_paths(layout: Layout, relay: Pods) -> list[Path]:
    """The in-cluster Prefect server: the workers and flow runs (and the alert relay, which
    posts events) reach its API, it reaches its database; when published, the load balancers
    reach it too."""
    server = Pods(layout.platform_namespace, {"app.kubernetes.io/name": prefect_server.APP})
    port = prefect_server.PORT
    paths = [
        Path("flows-to-prefect-server", Pods(layout.flows_namespace), server, port),
        Path("relay-to-prefect-server", relay, server, port),
        Path("prefect-server-to-postgres", server, (layout.vpc_cidr,), POSTGRES_PORT),
    ]
    if layout.public_cidrs:
        sources = (*layout.public_cidrs, layout.vpc_cidr)
        paths.append(Path("public-to-prefect-server", sources, server, port))
    return paths


def dask_paths(flows: str, operator_namespace: str) -> list[Path]:
    """A flow run's Dask cluster (in the flows namespace): its client and workers reach the
    scheduler, the scheduler and the workers reach workers on the ports those pick at start,
    the operator asks the scheduler (API, then comm) which workers to retire."""
    scheduler = Pods(flows, dask_operator.SCHEDULER_PODS)
    workers = Pods(flows, dask_operator.WORKER_PODS)
    operator = Pods(operator_namespace, dask_operator.OPERATOR_PODS)
    return [
        Path("flows-to-dask-scheduler", Pods(flows), scheduler, dask_operator.SCHEDULER_PORT),
        Path("dask-scheduler-to-workers", scheduler, workers, None),
        Path("dask-workers-to-workers", workers, workers, None),
        Path("dask-operator-to-scheduler", operator, scheduler, dask_operator.SCHEDULER_PORT),
        Path("dask-operator-to-dashboard", operator, scheduler, dask_operator.DASHBOARD_PORT),
    ]


def design_namespaces(layout: Layout) -> list[NamespacePolicy]:
    """Egress is denied where the workloads are ours (platform, flows); monitoring's charts
    scrape every namespace and call the API, so there only ingress is denied."""
    return [
        NamespacePolicy(layout.platform_namespace, deny_egress=True),
        NamespacePolicy(layout.flows_namespace, deny_egress=True),
        NamespacePolicy(layout.monitoring_namespace, deny_egress=False),
        NamespacePolicy(layout.db_admin_namespace, deny_egress=True),
        # The operator calls the API server and every DaskCluster's scheduler; nothing calls it.
        NamespacePolicy(layout.dask_operator_namespace, deny_egress=False),
    ]


class NetworkPolicies(pulumi.ComponentResource):
    """The NetworkPolicy objects for our namespaces and the design's paths."""

    def __init__(
        self,
        name: str,
        layout: Layout,
        *,
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:NetworkPolicies", name, None, opts)
        k8s_opts = access.child_opts(self)
        self.manifests = render(design_namespaces(layout), design_paths(layout))
        for manifest in self.manifests:
            meta = manifest["metadata"]
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{meta['namespace']}-{meta['name']}",
                metadata=meta,
                spec=manifest["spec"],
                opts=k8s_opts,
            )
        self.register_outputs({})

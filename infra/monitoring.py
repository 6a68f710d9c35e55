"""Monitoring: kube-prometheus-stack, the Pushgateway, the SLO rules, dashboards and alert routing.

Prometheus, Alertmanager, Grafana and the operator run on the CPU pool. The SLO rules and the
dashboards are what the generator committed (infra/monitoring_assets.py reads them as data);
each rule group becomes one PrometheusRule, each dashboard one ConfigMap that Grafana's sidecar
loads. Prometheus selects rules and ServiceMonitors by one label (`release: monitoring`), which the
chart's own objects carry too. Alertmanager's whole configuration is a Secret we write: the
receivers' webhook URLs come from secret config and never appear in Helm values or plain config.
The in-cluster alert relay's bearer token is a file Alertmanager reads from the relay's Secret
(mounted through `alertmanagerSpec.secrets`): it is in neither the config nor the values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from infra.config import InfraConfigError, MonitoringConfig
from infra.k8s import ClusterAccess, ScrapeTarget, cpu_pool_selector, in_cluster_url, resources
from infra.monitoring_assets import (
    Dashboard,
    MonitoringAssets,
    dashboard_object_name,
    rule_object_name,
)

CHART_REPO = "https://prometheus-community.github.io/helm-charts"
STACK_CHART = "kube-prometheus-stack"
STACK_RELEASE = "monitoring"  # also the chart's fullname: Services monitoring-prometheus, ...
PUSHGATEWAY_CHART = "prometheus-pushgateway"
PUSHGATEWAY_RELEASE = "pushgateway"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
PUSHGATEWAY_PORT = 9091
GRAFANA_SERVICE = "grafana"
CRD_API = "monitoring.coreos.com/v1"
# Prometheus picks up every PrometheusRule and ServiceMonitor carrying this label, in any namespace.
SELECTOR_LABELS = {"release": STACK_RELEASE}
SLO_RULE_LABELS = {**SELECTOR_LABELS, "app.kubernetes.io/part-of": "mlre-slos"}
# Grafana's dashboard sidecar loads ConfigMaps with this label into the folder the annotation names.
DASHBOARD_LABEL = ("grafana_dashboard", "1")
DASHBOARD_FOLDER_ANNOTATION = "grafana_folder"
DASHBOARD_FOLDER = "SLOs"
GRAFANA_ADMIN_SECRET = "grafana-admin"
# The operator's default config Secret name for the Alertmanager "<fullname>-alertmanager"; we
# also name it explicitly (configSecret), so either way Alertmanager reads the Secret we write.
ALERTMANAGER_SECRET = f"alertmanager-{STACK_RELEASE}-alertmanager"
# Where the operator mounts each Secret that `alertmanagerSpec.secrets` names: <dir>/<name>/<key>.
ALERTMANAGER_SECRETS_DIR = "/etc/alertmanager/secrets"
# Alert severities the SLO rules carry, and the receivers they go to.
PAGE, TICKET = "page", "ticket"
RELAY = "relay"
NULL_RECEIVER = "null"
# The label every SLO alert carries (the generator follows Sloth's names): notifications are
# grouped per SLO, and a page for an SLO silences its ticket while both fire.
SLO_ID_LABELS = ("sloth_id",)
# Pod and container security contexts of the chart pods (the restricted profile where the chart
# allows it; uids are the images' own non-root users).
RUNTIME_DEFAULT = {"type": "RuntimeDefault"}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": RUNTIME_DEFAULT,
}
# Sizes of the small, fixed-load parts; Prometheus (it grows with series) is sized from config.
SIZES = {
    "operator": resources("100m", "256Mi"),
    "kube-state-metrics": resources("50m", "256Mi"),
    "node-exporter": resources("20m", "64Mi"),
    "alertmanager": resources("50m", "256Mi"),
    "grafana": resources("100m", "512Mi"),
    "pushgateway": resources("20m", "128Mi"),
    "webhook-patch": resources("20m", "64Mi"),
}
ALERTMANAGER_STORAGE = "1Gi"  # silences and the notification log
PUSHGATEWAY_STORAGE = "1Gi"  # pushed groups survive a restart (no false "SLI absent" alerts)


@dataclass(frozen=True)
class RelayReceiver:
    """The alert relay as Alertmanager reaches it: its webhook URL and the key of a Secret in the
    monitoring namespace holding the bearer token it expects."""

    url: str
    token_secret: str
    token_key: str

    @property
    def credentials_file(self) -> str:
        """The token as a file in the Alertmanager pods (the Secret mounted by the operator)."""
        return f"{ALERTMANAGER_SECRETS_DIR}/{self.token_secret}/{self.token_key}"


def in_cluster(service: str, namespace: str, port: int) -> str:
    """URL of a Service on its own port from inside the cluster."""
    return f"http://{service}.{namespace}.svc.cluster.local:{port}"


def pod_security(uid: int) -> dict[str, Any]:
    """Pod securityContext: a fixed non-root uid/gid and the runtime's seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": RUNTIME_DEFAULT,
    }


def volume_claim(storage_class: str, size: str) -> dict[str, Any]:
    """A per-replica PersistentVolumeClaim template for operator-managed pods."""
    return {
        "volumeClaimTemplate": {
            "spec": {
                "storageClassName": storage_class,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}},
            }
        }
    }


def retention_size(storage_gb: int) -> str:
    """Size-based retention at 85% of the volume: Prometheus stops before the disk is full."""
    return f"{storage_gb * 85 // 100}GB"


def alertmanager_config(
    page_url: str, ticket_url: str, relay: RelayReceiver | None = None
) -> dict[str, Any]:
    """Alertmanager routing: severity=page and severity=ticket to their webhooks, the cluster's own
    critical alerts to the ticket webhook, everything else (warnings, Watchdog) to no one.

    `relay` is the in-cluster alert relay (self-healing): when given, every page and ticket alert
    is also posted there (`continue: true`, bearer token from a file), before the humans' receivers.
    """
    routes: list[dict[str, Any]] = []
    receivers: list[dict[str, Any]] = [{"name": NULL_RECEIVER}]
    if relay:
        routes.append(
            {
                "receiver": RELAY,
                "matchers": [f'severity=~"{PAGE}|{TICKET}"'],
                "continue": True,
                "group_wait": "10s",
            }
        )
        receivers.append(_webhook(RELAY, relay.url, bearer_file=relay.credentials_file))
    routes += [
        {"receiver": PAGE, "matchers": [f'severity="{PAGE}"'], "repeat_interval": "1h"},
        {"receiver": TICKET, "matchers": [f'severity="{TICKET}"'], "repeat_interval": "12h"},
        # kube-prometheus-stack's default rules (node, kubelet, workloads) say critical/warning.
        {"receiver": TICKET, "matchers": ['severity="critical"'], "repeat_interval": "12h"},
    ]
    receivers += [_webhook(PAGE, page_url), _webhook(TICKET, ticket_url)]
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": NULL_RECEIVER,
            "group_by": ["alertname", "namespace", *SLO_ID_LABELS],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "12h",
            "routes": routes,
        },
        "inhibit_rules": [
            {
                "source_matchers": [f'severity="{PAGE}"'],
                "target_matchers": [f'severity="{TICKET}"'],
                "equal": list(SLO_ID_LABELS),
            }
        ],
        "receivers": receivers,
    }


def _webhook(name: str, url: str, *, bearer_file: str | None = None) -> dict[str, Any]:
    """A receiver posting Alertmanager's webhook JSON (firing and resolved) to one URL, with
    `Authorization: Bearer <the file's content>` when `bearer_file` is given."""
    webhook: dict[str, Any] = {"url": url, "send_resolved": True}
    if bearer_file:
        webhook["http_config"] = {
            "authorization": {"type": "Bearer", "credentials_file": bearer_file}
        }
    return {"name": name, "webhook_configs": [webhook]}


def _checked_url(url: str, key: str) -> str:
    """A receiver URL must be http(s); anything else would only fail at the first alert."""
    if not url.startswith(("https://", "http://")):
        raise InfraConfigError(f"mlre:{key} must be an http(s) URL")
    return url


def stack_values(
    cfg: MonitoringConfig,
    *,
    storage_class: str,
    cluster_label: str,
    relay: RelayReceiver | None = None,
) -> dict[str, Any]:
    """kube-prometheus-stack values: everything on the CPU pool, hardened, sized, persistent;
    the relay's token Secret mounted into Alertmanager when there is a relay."""
    cpu = cpu_pool_selector()
    ha = cfg.replicas >= 2
    mounted_secrets = {"secrets": [relay.token_secret]} if relay else {}
    return {
        "crds": {"enabled": True},
        # EKS runs etcd, the scheduler and the controller manager out of reach, and kube-proxy
        # listens on localhost only: scraping them would only raise TargetDown alerts.
        "kubeEtcd": {"enabled": False},
        "kubeControllerManager": {"enabled": False},
        "kubeScheduler": {"enabled": False},
        "kubeProxy": {"enabled": False},
        "defaultRules": {
            "rules": {
                "etcd": False,
                "kubeControllerManager": False,
                "kubeSchedulerAlerting": False,
                "kubeSchedulerRecording": False,
                "kubeProxy": False,
            }
        },
        "prometheusOperator": {
            "nodeSelector": cpu,
            "resources": SIZES["operator"],
            "securityContext": pod_security(65534),
            "containerSecurityContext": CONTAINER_SECURITY,
            "admissionWebhooks": {
                "patch": {
                    "nodeSelector": cpu,
                    "resources": SIZES["webhook-patch"],
                    "securityContext": pod_security(2000),
                }
            },
        },
        "prometheus": {
            "podDisruptionBudget": {"enabled": ha, "minAvailable": 1},
            "prometheusSpec": {
                "replicas": cfg.replicas,
                "retention": cfg.retention,
                "retentionSize": retention_size(cfg.storage_gb),
                "externalLabels": {"cluster": cluster_label},
                "ruleSelectorNilUsesHelmValues": False,
                "ruleSelector": {"matchLabels": SELECTOR_LABELS},
                "ruleNamespaceSelector": {},
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "serviceMonitorSelector": {"matchLabels": SELECTOR_LABELS},
                "serviceMonitorNamespaceSelector": {},
                "nodeSelector": cpu,
                "podAntiAffinity": "soft",
                "resources": resources(cfg.prometheus_cpu_request, cfg.prometheus_memory),
                "securityContext": pod_security(1000),
                "storageSpec": volume_claim(storage_class, f"{cfg.storage_gb}Gi"),
            },
        },
        "alertmanager": {
            "podDisruptionBudget": {"enabled": ha, "minAvailable": 1},
            "alertmanagerSpec": {
                "replicas": cfg.replicas,
                # Our Secret, not the chart's: it holds the receivers' URLs.
                "useExistingSecret": True,
                "configSecret": ALERTMANAGER_SECRET,
                "nodeSelector": cpu,
                "podAntiAffinity": "soft",
                "resources": SIZES["alertmanager"],
                "securityContext": pod_security(1000),
                "storage": volume_claim(storage_class, ALERTMANAGER_STORAGE),
                **mounted_secrets,
            },
        },
        "grafana": {
            "fullnameOverride": GRAFANA_SERVICE,
            "admin": {
                "existingSecret": GRAFANA_ADMIN_SECRET,
                "userKey": "admin-user",
                "passwordKey": "admin-password",
            },
            "nodeSelector": cpu,
            "resources": SIZES["grafana"],
            "securityContext": pod_security(472),
            # Grafana writes its database and plugins under its data dir (an emptyDir).
            "containerSecurityContext": {**CONTAINER_SECURITY, "readOnlyRootFilesystem": False},
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL[0],
                    "labelValue": DASHBOARD_LABEL[1],
                    "folderAnnotation": DASHBOARD_FOLDER_ANNOTATION,
                    "provider": {"foldersFromFilesStructure": True},
                }
            },
            "grafana.ini": {"analytics": {"check_for_updates": False, "reporting_enabled": False}},
        },
        "kube-state-metrics": {"nodeSelector": cpu, "resources": SIZES["kube-state-metrics"]},
        # A host-level DaemonSet (hostNetwork, hostPID): it runs in kube-system so this namespace
        # can enforce the baseline Pod Security profile. It tolerates every taint (GPU nodes too).
        "prometheus-node-exporter": {
            "namespaceOverride": "kube-system",
            "resources": SIZES["node-exporter"],
        },
    }


def pushgateway_values(storage_class: str) -> dict[str, Any]:
    """Pushgateway values: one replica on the CPU pool, hardened, its state on a volume."""
    return {
        "fullnameOverride": PUSHGATEWAY_RELEASE,
        "nodeSelector": cpu_pool_selector(),
        "resources": SIZES["pushgateway"],
        "automountServiceAccountToken": False,
        "securityContext": pod_security(65534),
        "containerSecurityContext": CONTAINER_SECURITY,
        "persistentVolume": {
            "enabled": True,
            "storageClass": storage_class,
            "size": PUSHGATEWAY_STORAGE,
        },
        "extraArgs": ["--persistence.file=/data/pushgateway.data", "--persistence.interval=1m"],
        # Our ServiceMonitor (honorLabels) is declared by the Monitoring component.
        "serviceMonitor": {"enabled": False},
    }


def pushgateway_target(namespace: str) -> ScrapeTarget:
    """The Pushgateway chart's Service: its selector labels and port name."""
    return ScrapeTarget(
        name=PUSHGATEWAY_RELEASE,
        namespace=namespace,
        labels={
            "app.kubernetes.io/name": PUSHGATEWAY_CHART,
            "app.kubernetes.io/instance": PUSHGATEWAY_RELEASE,
        },
        port="http",
    )


def prometheus_rule(group: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """One rule group of the committed file as a PrometheusRule, verbatim."""
    return {
        "apiVersion": CRD_API,
        "kind": "PrometheusRule",
        "metadata": {
            "name": rule_object_name(group["name"]),
            "namespace": namespace,
            "labels": SLO_RULE_LABELS,
        },
        "spec": {"groups": [dict(group)]},
    }


def service_monitor(
    target: ScrapeTarget, namespace: str, *, honor_labels: bool = False
) -> dict[str, Any]:
    """A ServiceMonitor (in the monitoring namespace) scraping `target`'s named port."""
    endpoint: dict[str, Any] = {"port": target.port, "path": target.path, "interval": "30s"}
    if honor_labels:
        endpoint["honorLabels"] = True
    relabelings = []
    if target.node_label:
        # Which node a series came from: an idle GPU node is then a visible cost.
        relabelings.append(
            {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
        )
    if target.job:
        # The operator names the job after the Service; the SLO rules select the job by name.
        relabelings.append({"targetLabel": "job", "replacement": target.job})
    if relabelings:
        endpoint["relabelings"] = relabelings
    return {
        "apiVersion": CRD_API,
        "kind": "ServiceMonitor",
        "metadata": {"name": target.name, "namespace": namespace, "labels": SELECTOR_LABELS},
        "spec": {
            "selector": {"matchLabels": dict(target.labels)},
            "namespaceSelector": {"matchNames": [target.namespace]},
            "endpoints": [endpoint],
        },
    }


def dashboard_config_map(dashboard: Dashboard, namespace: str) -> dict[str, Any]:
    """A ConfigMap Grafana's sidecar provisions into the SLOs folder."""
    return {
        "metadata": {
            "name": dashboard_object_name(dashboard.file_name),
            "namespace": namespace,
            "labels": {DASHBOARD_LABEL[0]: DASHBOARD_LABEL[1]},
            "annotations": {DASHBOARD_FOLDER_ANNOTATION: DASHBOARD_FOLDER},
        },
        "data": {dashboard.file_name: dashboard.text},
    }


class Monitoring(pulumi.ComponentResource):
    """kube-prometheus-stack + Pushgateway, the SLO PrometheusRules, ServiceMonitors for the
    Pushgateway and every scrape target, dashboards, Alertmanager routing (to the alert relay too,
    when one is given)."""

    def __init__(
        self,
        name: str,
        cfg: MonitoringConfig,
        *,
        assets: MonitoringAssets,
        access: ClusterAccess,
        storage_class: pulumi.Input[str],
        cluster_label: str,
        scrape_targets: Sequence[ScrapeTarget],
        alert_relay: pulumi.Input[RelayReceiver] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:Monitoring", name, None, opts)
        ns = cfg.namespace
        k8s_opts = access.child_opts(self)
        secrets = self._secrets(name, cfg, alert_relay, k8s_opts)
        # The relay's token Secret name is an Output: the release waits for that Secret.
        values = pulumi.Output.all(storage_class, alert_relay).apply(
            lambda a: stack_values(cfg, storage_class=a[0], cluster_label=cluster_label, relay=a[1])
        )
        stack = k8s.helm.v3.Release(
            f"{name}-{STACK_CHART}",
            name=STACK_RELEASE,
            chart=STACK_CHART,
            version=cfg.stack_chart_version,
            repository_opts={"repo": CHART_REPO},
            namespace=ns,
            values=values,
            timeout=900,  # CRDs, the operator, its webhook and three StatefulSets
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=secrets)),
        )
        k8s.helm.v3.Release(
            f"{name}-{PUSHGATEWAY_RELEASE}",
            name=PUSHGATEWAY_RELEASE,
            chart=PUSHGATEWAY_CHART,
            version=cfg.pushgateway_chart_version,
            repository_opts={"repo": CHART_REPO},
            namespace=ns,
            values=pulumi.Output.from_input(storage_class).apply(pushgateway_values),
            opts=k8s_opts,
        )
        # Custom resources need the chart's CRDs and admission webhook first.
        after_stack = pulumi.ResourceOptions.merge(
            k8s_opts, pulumi.ResourceOptions(depends_on=[stack])
        )
        for group in assets.rule_groups:
            self._custom(name, prometheus_rule(group, ns), after_stack)
        self._custom(
            name, service_monitor(pushgateway_target(ns), ns, honor_labels=True), after_stack
        )
        for target in scrape_targets:
            self._custom(name, service_monitor(target, ns), after_stack)
        for dashboard in assets.dashboards:
            manifest = dashboard_config_map(dashboard, ns)
            k8s.core.v1.ConfigMap(
                f"{name}-{manifest['metadata']['name']}",
                metadata=manifest["metadata"],
                data=manifest["data"],
                opts=k8s_opts,
            )
        self.prometheus_url = in_cluster(f"{STACK_RELEASE}-prometheus", ns, PROMETHEUS_PORT)
        self.alertmanager_url = in_cluster(f"{STACK_RELEASE}-alertmanager", ns, ALERTMANAGER_PORT)
        self.pushgateway_url = in_cluster(PUSHGATEWAY_RELEASE, ns, PUSHGATEWAY_PORT)
        self.grafana_url = in_cluster_url(GRAFANA_SERVICE, ns)
        self.register_outputs(
            {
                "prometheus_url": self.prometheus_url,
                "alertmanager_url": self.alertmanager_url,
                "pushgateway_url": self.pushgateway_url,
                "grafana_url": self.grafana_url,
            }
        )

    def _secrets(
        self,
        name: str,
        cfg: MonitoringConfig,
        relay: pulumi.Input[RelayReceiver] | None,
        opts: pulumi.ResourceOptions,
    ) -> list[pulumi.Resource]:
        """Grafana's admin login and Alertmanager's configuration: Secrets the charts only name."""
        self.grafana_password = random.RandomPassword(
            f"{name}-grafana-admin",
            length=32,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        grafana = k8s.core.v1.Secret(
            f"{name}-grafana-admin-secret",
            metadata={"name": GRAFANA_ADMIN_SECRET, "namespace": cfg.namespace},
            string_data={"admin-user": "admin", "admin-password": self.grafana_password.result},
            opts=opts,
        )
        config = pulumi.Output.all(cfg.page_webhook_url, cfg.ticket_webhook_url, relay).apply(
            lambda urls: yaml.safe_dump(
                alertmanager_config(
                    _checked_url(urls[0], "alertPageWebhookUrl"),
                    _checked_url(urls[1], "alertTicketWebhookUrl"),
                    urls[2],
                ),
                sort_keys=False,
            )
        )
        alertmanager = k8s.core.v1.Secret(
            f"{name}-alertmanager-config",
            metadata={"name": ALERTMANAGER_SECRET, "namespace": cfg.namespace},
            string_data={"alertmanager.yaml": pulumi.Output.secret(config)},
            opts=opts,
        )
        return [grafana, alertmanager]

    def _custom(
        self, name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> k8s.apiextensions.CustomResource:
        """A monitoring.coreos.com object from its manifest dict."""
        kind, object_name = manifest["kind"], manifest["metadata"]["name"]
        return k8s.apiextensions.CustomResource(
            f"{name}-{kind.lower()}-{object_name}",
            api_version=manifest["apiVersion"],
            kind=kind,
            metadata=manifest["metadata"],
            spec=manifest["spec"],
            opts=opts,
        )

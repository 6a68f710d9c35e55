"""The monitoring component (SLOs in the cloud), asserted like a policy on what the mocks saw.

The committed rule file and dashboards are read here independently of infra/ (plain YAML and
JSON), so a rendering that drops, reorders or rewrites a rule fails. Custom resources have no
schema in kubernetes-validate: their shape is checked here, and the rules they carry go through
the real `promtool check rules`; the Alertmanager routing tree through `amtool config routes test`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import monitoring
from infra.addons import DCGM_PORT_NAME, DCGM_SERVICE_LABELS, STORAGE_CLASS
from infra.config import InfraConfigError, load_config
from infra.monitoring_assets import DASHBOARDS_DIR, SLO_RULES_FILE
from mlre import k8s_labels
from mlre.settings import PROJECT_ROOT
from tests.infra.infra_harness import (
    ROOT,
    TEST_SECRETS,
    Run,
    custom_resources,
    helm_releases,
    manifests,
    run_mocked,
    stack_config,
)

pytestmark = pytest.mark.infra

# Where the committed generator outputs are read from (the repository root).
ASSETS_ROOT = ROOT
DECLARED = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
CPU = {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
SEMVER = re.compile(r"\d+\.\d+\.\d+")
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
PAGE_URL = TEST_SECRETS["mlre:alertPageWebhookUrl"]
TICKET_URL = TEST_SECRETS["mlre:alertTicketWebhookUrl"]
RELAY = monitoring.RelayReceiver(
    url="http://alert-relay.mlre-monitoring.svc.cluster.local:9096/alerts",
    token_secret="relay-token",
    token_key="TOKEN",
)


def _committed_groups() -> list[dict[str, Any]]:
    return yaml.safe_load((ASSETS_ROOT / SLO_RULES_FILE).read_text())["groups"]


def _committed_dashboards() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((ASSETS_ROOT / DASHBOARDS_DIR).glob("*.json"))}


def _config(stack: str, key: str) -> Any:
    return yaml.safe_load(stack_config(stack)[f"mlre:{key}"])


def _stack_values(run: Run) -> dict[str, Any]:
    return helm_releases(run)["kube-prometheus-stack"]["values"]


def _of_kind(run: Run, kind: str) -> list[dict[str, Any]]:
    return [m for m in custom_resources(run) if m["kind"] == kind]


def _service_monitor(run: Run, name: str) -> dict[str, Any]:
    (found,) = [m for m in _of_kind(run, "ServiceMonitor") if m["metadata"]["name"] == name]
    return found


def _alertmanager_config(run: Run) -> dict[str, Any]:
    (secret,) = [m for m in manifests(run) if m["kind"] == "Secret"
                 and m["metadata"]["name"] == monitoring.ALERTMANAGER_SECRET]  # fmt: skip
    return yaml.safe_load(secret["stringData"]["alertmanager.yaml"])


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: install Debian's {package} package (`make test` does as root)"
    return path


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


# --- the component and its charts ---------------------------------------------------------------


def test_component_and_namespace_exist_on_both_stacks(stack_run: Run) -> None:
    assert stack_run.of_type("mlre:infra:Monitoring")
    (ns,) = [m for m in manifests(stack_run) if m["kind"] == "Namespace"
             and m["metadata"]["name"] == "mlre-monitoring"]  # fmt: skip
    # Baseline, not privileged: the host-level node exporter runs in kube-system instead.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert _stack_values(stack_run)["prometheus-node-exporter"]["namespaceOverride"] == (
        "kube-system"
    )


def test_chart_versions_are_pinned_from_config(stack_run: Run) -> None:
    releases = helm_releases(stack_run)
    for chart, key in (("kube-prometheus-stack", "kubePrometheusStackChartVersion"),
                       ("prometheus-pushgateway", "pushgatewayChartVersion")):  # fmt: skip
        release = releases[chart]
        assert SEMVER.fullmatch(release["version"]), f"{chart} is not pinned to an exact version"
        assert release["version"] == DECLARED[f"mlre:{key}"]["default"]
        assert (
            release["repositoryOpts"]["repo"]
            == "https://prometheus-community.github.io/helm-charts"
        )
        assert release["namespace"] == "mlre-monitoring"
    for release in releases.values():  # every chart in the program, the add-ons' too
        assert SEMVER.fullmatch(release["version"]), release["chart"]


def test_prometheus_stack_runs_on_the_cpu_pool_never_the_gpu_pool(stack_run: Run) -> None:
    values = _stack_values(stack_run)
    placed = {
        "prometheus": values["prometheus"]["prometheusSpec"],
        "alertmanager": values["alertmanager"]["alertmanagerSpec"],
        "grafana": values["grafana"],
        "operator": values["prometheusOperator"],
        "webhook-patch": values["prometheusOperator"]["admissionWebhooks"]["patch"],
        "kube-state-metrics": values["kube-state-metrics"],
        "pushgateway": helm_releases(stack_run)["prometheus-pushgateway"]["values"],
    }
    for part, spec in placed.items():
        assert spec["nodeSelector"] == CPU, part
        assert "tolerations" not in spec, part  # GPU nodes are tainted: nothing here tolerates it
        assert "affinity" not in spec, part
        assert k8s_labels.GPU_TAINT_KEY not in json.dumps(spec), part


def test_pods_are_non_root_and_sized(stack_run: Run) -> None:
    values = _stack_values(stack_run)
    pushgateway = helm_releases(stack_run)["prometheus-pushgateway"]["values"]
    pods = {
        "prometheus": values["prometheus"]["prometheusSpec"],
        "alertmanager": values["alertmanager"]["alertmanagerSpec"],
        "grafana": values["grafana"],
        "operator": values["prometheusOperator"],
        "pushgateway": pushgateway,
    }
    for part, spec in pods.items():
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True, part
        assert sc["runAsUser"] > 0, part
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, part
        assert spec["resources"]["requests"]["cpu"], part
        assert spec["resources"]["limits"]["memory"] == spec["resources"]["requests"]["memory"]
    for spec in (values["grafana"], values["prometheusOperator"], pushgateway):
        container = spec["containerSecurityContext"]
        assert container["allowPrivilegeEscalation"] is False
        assert container["capabilities"] == {"drop": ["ALL"]}
    assert pushgateway["automountServiceAccountToken"] is False


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_prometheus_retention_storage_and_size_come_from_config(
    stack_runs: dict[str, Run], stack: str
) -> None:
    spec = _stack_values(stack_runs[stack])["prometheus"]["prometheusSpec"]
    assert spec["retention"] == _config(stack, "prometheusRetention")
    storage_gb = _config(stack, "prometheusStorageGb")
    assert spec["retentionSize"] == f"{storage_gb * 85 // 100}GB"
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == STORAGE_CLASS
    assert claim["resources"]["requests"]["storage"] == f"{storage_gb}Gi"
    assert spec["resources"]["requests"] == {
        "cpu": _config(stack, "prometheusCpuRequest"),
        "memory": _config(stack, "prometheusMemory"),
    }
    assert spec["externalLabels"] == {"cluster": f"mlre-{stack}"}


def test_retention_covers_the_30_day_slo_window() -> None:
    days = int(DECLARED["mlre:prometheusRetention"]["default"].removesuffix("d"))
    assert days >= 30


def test_prod_is_highly_available_dev_is_single(stack_runs: dict[str, Run]) -> None:
    for stack, replicas in (("dev", 1), ("prod", 2)):
        values = _stack_values(stack_runs[stack])
        assert values["prometheus"]["prometheusSpec"]["replicas"] == replicas
        assert values["alertmanager"]["alertmanagerSpec"]["replicas"] == replicas
        # A PDB of minAvailable 1 over one pod would block every node drain.
        assert values["prometheus"]["podDisruptionBudget"]["enabled"] is (replicas >= 2)
        assert values["alertmanager"]["podDisruptionBudget"]["enabled"] is (replicas >= 2)


def test_volumes_come_from_the_encrypted_ebs_storage_class(stack_run: Run) -> None:
    (sc,) = [m for m in manifests(stack_run) if m["kind"] == "StorageClass"]
    assert sc["metadata"]["name"] == STORAGE_CLASS
    assert sc["provisioner"] == "ebs.csi.aws.com"
    assert sc["parameters"] == {"type": "gp3", "encrypted": "true"}
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    (addon,) = [
        a
        for a in stack_run.of_type("aws:eks/addon:Addon")
        if a.inputs["addonName"] == "aws-ebs-csi-driver"
    ]
    assert addon.inputs["serviceAccountRoleArn"].startswith("arn:aws:iam")
    attachments = stack_run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    (attachment,) = [a for a in attachments if "ebs-csi" in a.name]
    assert attachment.inputs["policyArn"] == (
        "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
    )
    pushgateway = helm_releases(stack_run)["prometheus-pushgateway"]["values"]
    assert pushgateway["persistentVolume"]["storageClass"] == STORAGE_CLASS
    alertmanager = _stack_values(stack_run)["alertmanager"]["alertmanagerSpec"]
    assert alertmanager["storage"]["volumeClaimTemplate"]["spec"]["storageClassName"] == (
        STORAGE_CLASS
    )


# --- the SLO rules ------------------------------------------------------------------------------


def test_every_rule_group_of_the_committed_file_is_a_prometheus_rule(stack_run: Run) -> None:
    groups = _committed_groups()
    rendered = _of_kind(stack_run, "PrometheusRule")
    assert len(rendered) == len(groups)
    assert sum(len(r["spec"]["groups"][0]["rules"]) for r in rendered) == sum(
        len(g["rules"]) for g in groups
    )
    by_group = {r["spec"]["groups"][0]["name"]: r for r in rendered}
    for group in groups:
        rule = by_group[group["name"]]
        # Verbatim: the same rules, in order, with every label and annotation.
        assert rule["spec"]["groups"] == [group]
        assert rule["metadata"]["namespace"] == "mlre-monitoring"


def test_the_stack_rule_selector_picks_up_every_rule(stack_run: Run) -> None:
    spec = _stack_values(stack_run)["prometheus"]["prometheusSpec"]
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["ruleNamespaceSelector"] == {}  # any namespace
    for rule in _of_kind(stack_run, "PrometheusRule"):
        assert _selects(spec["ruleSelector"], rule["metadata"]["labels"])


def test_custom_resources_have_the_operator_shape(stack_run: Run) -> None:
    found = custom_resources(stack_run)
    assert {m["kind"] for m in found} == {"PrometheusRule", "ServiceMonitor"}
    names = [(m["kind"], m["metadata"]["name"]) for m in found]
    assert len(names) == len(set(names))
    for manifest in found:
        assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
        meta = manifest["metadata"]
        assert DNS_1123.fullmatch(meta["name"]), meta["name"]
        assert len(meta["name"]) <= 63, meta["name"]
        assert meta["namespace"] == "mlre-monitoring"
        assert set(manifest) == {"apiVersion", "kind", "metadata", "spec"}
        if manifest["kind"] == "PrometheusRule":
            (group,) = manifest["spec"]["groups"]
            assert group["name"]
            assert group["rules"]
            for rule in group["rules"]:
                assert rule["expr"]
                assert ("record" in rule) != ("alert" in rule), rule
                assert all(isinstance(v, str) for v in rule.get("labels", {}).values())
        else:
            spec = manifest["spec"]
            assert spec["selector"]["matchLabels"]
            assert spec["namespaceSelector"]["matchNames"]
            assert all(e["port"] and e["path"].startswith("/") for e in spec["endpoints"])


def test_rendered_rules_pass_promtool(stack_runs: dict[str, Run], tmp_path: Path) -> None:
    promtool = _tool("promtool", "prometheus")
    groups = [
        g for r in _of_kind(stack_runs["prod"], "PrometheusRule") for g in r["spec"]["groups"]
    ]
    rule_file = tmp_path / "rendered.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    done = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_slo_alerts_route_by_page_and_ticket_severity(stack_run: Run) -> None:
    severities = {
        rule["labels"]["severity"]
        for group in _committed_groups()
        for rule in group["rules"]
        if "alert" in rule
    }
    assert severities <= {monitoring.PAGE, monitoring.TICKET}
    assert monitoring.TICKET in severities


# --- scraping -----------------------------------------------------------------------------------


def test_service_monitor_selects_the_prediction_service(stack_run: Run) -> None:
    (service,) = [m for m in manifests(stack_run)
                  if m["kind"] == "Service" and m["metadata"]["name"] == "serving"]  # fmt: skip
    monitor = _service_monitor(stack_run, "serving")
    spec = monitor["spec"]
    assert _selects(spec["selector"], service["metadata"]["labels"])
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    # The operator would name the job after the Service ("serving"); the serving SLO rules
    # select job="mlre-serving", as the local Prometheus names it: relabelled to that.
    rules = (PROJECT_ROOT / "deploy" / "prometheus" / "slo-rules.yaml").read_text()
    assert 'job="mlre-serving"' in rules
    assert {"targetLabel": "job", "replacement": "mlre-serving"} in endpoint["relabelings"]


def test_service_monitors_are_picked_up_by_the_stack(stack_run: Run) -> None:
    spec = _stack_values(stack_run)["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert spec["serviceMonitorNamespaceSelector"] == {}
    monitors = _of_kind(stack_run, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {
        "serving",
        "pushgateway",
        "dcgm-exporter",
        "alert-relay",
    }
    for monitor in monitors:
        assert _selects(spec["serviceMonitorSelector"], monitor["metadata"]["labels"])


def test_pushgateway_is_scraped_with_honor_labels(stack_run: Run) -> None:
    values = helm_releases(stack_run)["prometheus-pushgateway"]["values"]
    spec = _service_monitor(stack_run, "pushgateway")["spec"]
    (endpoint,) = spec["endpoints"]
    assert endpoint["honorLabels"] is True  # the flows' job/instance labels survive the scrape
    assert endpoint["port"] == "http"
    # The chart's Service: fullname and selector labels from the release and chart names.
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus-pushgateway",
        "app.kubernetes.io/instance": values["fullnameOverride"],
    }
    assert spec["namespaceSelector"] == {"matchNames": ["mlre-monitoring"]}
    assert values["serviceMonitor"]["enabled"] is False  # no second, unselected copy
    assert "--persistence.file=/data/pushgateway.data" in values["extraArgs"]


def test_dcgm_exporter_metrics_are_scraped(stack_run: Run) -> None:
    dcgm = helm_releases(stack_run)["dcgm-exporter"]
    spec = _service_monitor(stack_run, "dcgm-exporter")["spec"]
    assert spec["selector"]["matchLabels"] == DCGM_SERVICE_LABELS
    assert DCGM_SERVICE_LABELS["app.kubernetes.io/instance"] == dcgm["name"]
    assert spec["namespaceSelector"] == {"matchNames": [dcgm["namespace"]]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == DCGM_PORT_NAME
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in (
        endpoint["relabelings"]
    )
    assert dcgm["values"]["serviceMonitor"]["enabled"] is False
    # The exporter itself runs on the GPU nodes (ClusterAddons), not here.
    assert dcgm["values"]["tolerations"] == [k8s_labels.gpu_toleration()]


# --- dashboards ---------------------------------------------------------------------------------


def test_every_committed_dashboard_is_a_sidecar_config_map(stack_run: Run) -> None:
    committed = _committed_dashboards()
    assert committed
    maps = [m for m in manifests(stack_run) if m["kind"] == "ConfigMap"
            and m["metadata"]["name"].startswith("dashboard-")]  # fmt: skip
    assert len(maps) == len(committed)
    sidecar = _stack_values(stack_run)["grafana"]["sidecar"]["dashboards"]
    assert sidecar["enabled"] is True
    loaded = {}
    for config_map in maps:
        meta = config_map["metadata"]
        assert meta["labels"][sidecar["label"]] == sidecar["labelValue"] == "1"
        assert meta["labels"] == {"grafana_dashboard": "1"}
        assert meta["namespace"] == "mlre-monitoring"
        assert meta["annotations"][sidecar["folderAnnotation"]] == "SLOs"
        loaded.update(config_map["data"])
    assert loaded == committed
    for text in loaded.values():
        assert json.loads(text)["title"]


def test_grafana_admin_comes_from_a_generated_secret(stack_run: Run) -> None:
    admin = _stack_values(stack_run)["grafana"]["admin"]
    (secret,) = [m for m in manifests(stack_run) if m["kind"] == "Secret"
                 and m["metadata"]["name"] == admin["existingSecret"]]  # fmt: skip
    assert set(secret["stringData"]) == {admin["userKey"], admin["passwordKey"]}
    assert secret["stringData"][admin["passwordKey"]] == "p" * 32  # RandomPassword, not a default
    assert "adminPassword" not in _stack_values(stack_run)["grafana"]


# --- alert routing ------------------------------------------------------------------------------


def test_alertmanager_reads_our_config_secret(stack_run: Run) -> None:
    spec = _stack_values(stack_run)["alertmanager"]["alertmanagerSpec"]
    assert spec["useExistingSecret"] is True
    assert spec["configSecret"] == monitoring.ALERTMANAGER_SECRET
    config = _alertmanager_config(stack_run)
    routes = {tuple(r["matchers"]): r["receiver"] for r in config["route"]["routes"]}
    assert routes[('severity="page"',)] == "page"
    assert routes[('severity="ticket"',)] == "ticket"
    assert config["route"]["receiver"] == "null"  # warnings and Watchdog notify no one
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]
            if "webhook_configs" in r}  # fmt: skip
    relay = stack_run.outputs["alert_relay_url"] + "/alerts"
    assert urls == {"page": PAGE_URL, "ticket": TICKET_URL, "relay": relay}


def test_receiver_urls_stay_out_of_helm_values_and_plain_config(stack_run: Run) -> None:
    for release in helm_releases(stack_run).values():
        text = json.dumps(release)
        assert PAGE_URL not in text
        assert TICKET_URL not in text
    for key in ("mlre:alertPageWebhookUrl", "mlre:alertTicketWebhookUrl"):
        assert DECLARED[key]["secret"] is True
        assert "default" not in DECLARED[key]
    for stack in ("dev", "prod"):
        stack_file = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        assert not {"mlre:alertPageWebhookUrl", "mlre:alertTicketWebhookUrl"} & set(stack_file)


def _route(config: dict[str, Any], tmp_path: Path, *labels: str) -> str:
    """The receivers amtool's routing test picks for an alert with these labels."""
    amtool = _tool("amtool", "prometheus-alertmanager")
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    done = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={path}", *labels],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_amtool_routes_page_ticket_and_the_rest(stack_runs: dict[str, Run], tmp_path: Path) -> None:
    config = _alertmanager_config(stack_runs["dev"])
    slo = "sloth_id=serving-availability"
    # The stack deploys the alert relay: it gets every page and ticket first.
    assert _route(config, tmp_path, "severity=page", slo) == "relay,page"
    assert _route(config, tmp_path, "severity=ticket", slo) == "relay,ticket"
    assert _route(config, tmp_path, "severity=critical", "alertname=KubeNodeNotReady") == "ticket"
    assert _route(config, tmp_path, "severity=warning", "alertname=KubePodNotReady") == "null"
    assert _route(config, tmp_path, "severity=none", "alertname=Watchdog") == "null"


def test_relay_hook_sees_every_slo_alert_before_the_humans(tmp_path: Path) -> None:
    config = monitoring.alertmanager_config(PAGE_URL, TICKET_URL, relay=RELAY)
    assert _route(config, tmp_path, "severity=page") == "relay,page"
    assert _route(config, tmp_path, "severity=ticket") == "relay,ticket"
    assert _route(config, tmp_path, "severity=warning") == "null"
    (receiver,) = [r for r in config["receivers"] if r["name"] == "relay"]
    assert receiver["webhook_configs"] == [
        {
            "url": RELAY.url,
            "send_resolved": True,
            "http_config": {
                "authorization": {
                    "type": "Bearer",
                    "credentials_file": "/etc/alertmanager/secrets/relay-token/TOKEN",
                }
            },
        }
    ]
    without = monitoring.alertmanager_config(PAGE_URL, TICKET_URL)
    assert "relay" not in json.dumps(without)


def test_a_page_inhibits_the_same_slos_ticket() -> None:
    (rule,) = monitoring.alertmanager_config(PAGE_URL, TICKET_URL)["inhibit_rules"]
    assert rule["source_matchers"] == ['severity="page"']
    assert rule["target_matchers"] == ['severity="ticket"']
    assert rule["equal"] == ["sloth_id"]


# --- outputs and config -------------------------------------------------------------------------


def test_monitoring_urls_are_stack_outputs(stack_run: Run) -> None:
    outputs = stack_run.outputs
    ns = "mlre-monitoring.svc.cluster.local"
    assert outputs["pushgateway_url"] == f"http://pushgateway.{ns}:9091"
    assert outputs["prometheus_url"] == f"http://monitoring-prometheus.{ns}:9090"
    assert outputs["alertmanager_url"] == f"http://monitoring-alertmanager.{ns}:9093"
    assert outputs["grafana_url"] == f"http://grafana.{ns}"


def _load(**overrides: object):
    return run_mocked(load_config, stack="dev", config=stack_config("dev", overrides)).value


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mlre:prometheusRetention", "a month", "prometheusRetention"),
        ("mlre:prometheusStorageGb", 5, "prometheusStorageGb"),
        ("mlre:monitoringReplicas", 0, "monitoringReplicas"),
    ],
)
def test_bad_monitoring_config_names_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(InfraConfigError, match=message):
        _load(**{key: value})


@pytest.mark.parametrize("key", ["mlre:alertPageWebhookUrl", "mlre:alertTicketWebhookUrl"])
def test_missing_receiver_webhook_fails(key: str) -> None:
    config = {k: v for k, v in stack_config("dev").items() if k != key}
    with pytest.raises(Exception, match=key.removeprefix("mlre:")):
        run_mocked(load_config, stack="dev", config=config)

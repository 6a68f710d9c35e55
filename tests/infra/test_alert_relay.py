"""The alert relay component and Alertmanager's wiring to it, asserted on what the mocks saw."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra import monitoring, prefect_server
from infra.alert_relay import APP, PORT, TOKEN_KEY
from infra.policy.rules import POLICIES
from infra.prefect_worker import API_KEY_ENTRY, AUTH_STRING_ENTRY
from mlre import k8s_labels
from tests.infra.infra_harness import (
    Run,
    custom_resources,
    helm_releases,
    manifests,
    runs_prefect_server,
    stack_config,
    violations,
)

pytestmark = pytest.mark.infra

NAMESPACE = "mlre-monitoring"  # next to Alertmanager, which mounts the same token Secret
SECRET = f"{APP}-secrets"
TOKEN = "p" * 48  # what the mocked RandomPassword of length 48 returns
URL = f"http://{APP}.{NAMESPACE}.svc.cluster.local:{PORT}"


def _objects(run: Run) -> dict[str, dict[str, Any]]:
    """The relay's Kubernetes objects by kind."""
    found: dict[str, dict[str, Any]] = {}
    for manifest in manifests(run):
        if manifest["metadata"]["name"] in {APP, SECRET}:
            assert manifest["kind"] not in found, f"two {manifest['kind']} objects named {APP}"
            found[manifest["kind"]] = manifest
    return found


def _pod(run: Run) -> dict[str, Any]:
    return _objects(run)["Deployment"]["spec"]["template"]["spec"]


def _container(run: Run) -> dict[str, Any]:
    (container,) = _pod(run)["containers"]
    return container


def _alertmanager_config(run: Run) -> dict[str, Any]:
    (secret,) = [m for m in manifests(run) if m["kind"] == "Secret"
                 and m["metadata"]["name"] == monitoring.ALERTMANAGER_SECRET]  # fmt: skip
    return yaml.safe_load(secret["stringData"]["alertmanager.yaml"])


def _alertmanager_spec(run: Run) -> dict[str, Any]:
    values = helm_releases(run)["kube-prometheus-stack"]["values"]
    return values["alertmanager"]["alertmanagerSpec"]


def test_component_and_its_objects_exist_in_the_monitoring_namespace(stack_run: Run) -> None:
    assert stack_run.of_type("mlre:infra:AlertRelay")
    objects = _objects(stack_run)
    assert set(objects) == {"ServiceAccount", "Secret", "Deployment", "Service"}
    for manifest in objects.values():
        kubernetes_validate.validate(manifest, "1.33", strict=True)
        assert manifest["metadata"]["namespace"] == NAMESPACE


def test_deployment_runs_the_relay_hardened_on_the_cpu_pool(stack_run: Run) -> None:
    deployment = _objects(stack_run)["Deployment"]
    pod, container = _pod(stack_run), _container(stack_run)
    assert deployment["spec"]["replicas"] == 1
    assert container["command"] == ["python", "-m", "relay"]
    assert container["image"] == stack_config("dev")["mlre:servingImage"]  # the flows image
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the flows image's USER
    assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
    assert "tolerations" not in pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == _objects(stack_run)["ServiceAccount"]["metadata"]["name"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests["cpu"]
    assert limits["memory"] == requests["memory"]


def test_the_ledger_lives_on_the_writable_volume(stack_run: Run) -> None:
    env = {e["name"]: e.get("value") for e in _container(stack_run)["env"]}
    assert _container(stack_run)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    (volume,) = _pod(stack_run)["volumes"]
    assert volume["name"] == "tmp"
    assert "emptyDir" in volume
    assert env["MLRE_HOME"].startswith("/tmp/")  # MLRE_HOME/relay/ledger.sqlite is writable


def test_probes_hit_healthz_on_the_relay_port(stack_run: Run) -> None:
    container = _container(stack_run)
    assert container["ports"] == [{"name": "http", "containerPort": PORT}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": PORT}, probe


def test_env_binds_all_interfaces_and_points_at_the_configured_prefect_api(
    stack_run: Run,
) -> None:
    env = {e["name"]: e.get("value") for e in _container(stack_run)["env"]}
    assert env["MLRE_HOST"] == "0.0.0.0"  # settings.host defaults to loopback
    assert env["MLRE_RELAY_PORT"] == str(PORT)
    # The relay uses the API the workers use: the in-cluster server's, or the configured one.
    expected = (
        f"http://{prefect_server.APP}.mlre-platform.svc.cluster.local:{prefect_server.PORT}/api"
        if runs_prefect_server(stack_run)
        else stack_run.config["mlre:prefectApiUrl"]
    )
    assert env["MLRE_RELAY_PREFECT_API_URL"] == expected


def test_token_comes_from_the_secret_never_a_literal(stack_run: Run) -> None:
    container = _container(stack_run)
    (token,) = [e for e in container["env"] if e["name"] == TOKEN_KEY]
    assert token == {
        "name": TOKEN_KEY,
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": TOKEN_KEY}},
    }
    assert "envFrom" not in container
    assert TOKEN not in json.dumps(_objects(stack_run)["Deployment"])
    # The workers' credential (Prefect's events API): the in-cluster server's auth string, or
    # the configured API key; never both (Prefect's clients would send the key).
    credential, value = (
        (AUTH_STRING_ENTRY, "admin:" + "p" * 32)
        if runs_prefect_server(stack_run)
        else (API_KEY_ENTRY, "pnu_test_only_not_a_real_key")
    )
    assert _objects(stack_run)["Secret"]["stringData"] == {TOKEN_KEY: TOKEN, credential: value}
    (key,) = [e for e in container["env"] if e["name"] in {API_KEY_ENTRY, AUTH_STRING_ENTRY}]
    assert key == {
        "name": credential,
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": credential}},
    }
    (password,) = [r for r in stack_run.of_type("random:index/randomPassword:RandomPassword")
                   if APP in r.name]  # fmt: skip
    assert password.inputs["length"] >= 32


def test_service_is_cluster_ip_on_the_relay_port(stack_run: Run) -> None:
    objects = _objects(stack_run)
    service = objects["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": PORT, "targetPort": "http"}]
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert stack_run.outputs["alert_relay_url"] == URL


def test_prometheus_scrapes_the_relay(stack_run: Run) -> None:
    service = _objects(stack_run)["Service"]
    (monitor,) = [m for m in custom_resources(stack_run) if m["kind"] == "ServiceMonitor"
                  and m["metadata"]["name"] == APP]  # fmt: skip
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_alertmanager_posts_page_and_ticket_alerts_with_the_bearer_file(stack_run: Run) -> None:
    config = _alertmanager_config(stack_run)
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == monitoring.RELAY]
    assert route["matchers"] == ['severity=~"page|ticket"']
    assert route["continue"] is True  # the humans' page and ticket receivers still get them
    (receiver,) = [r for r in config["receivers"] if r["name"] == monitoring.RELAY]
    assert receiver["webhook_configs"] == [
        {
            "url": f"{URL}/alerts",
            "send_resolved": True,
            "http_config": {
                "authorization": {
                    "type": "Bearer",
                    "credentials_file": f"/etc/alertmanager/secrets/{SECRET}/{TOKEN_KEY}",
                }
            },
        }
    ]


def test_alertmanager_mounts_the_relays_token_secret(stack_run: Run) -> None:
    # The operator mounts each named Secret (of Alertmanager's namespace) at
    # /etc/alertmanager/secrets/<name>: the credentials_file above is that Secret's key.
    assert _alertmanager_spec(stack_run)["secrets"] == [SECRET]
    assert monitoring.ALERTMANAGER_SECRETS_DIR == "/etc/alertmanager/secrets"
    assert (
        _objects(stack_run)["Secret"]["metadata"]["namespace"]
        == (helm_releases(stack_run)["kube-prometheus-stack"]["namespace"])
    )


def test_the_token_stays_out_of_helm_values_and_alertmanagers_config(stack_run: Run) -> None:
    for release in helm_releases(stack_run).values():
        assert TOKEN not in json.dumps(release)
    assert TOKEN not in json.dumps(_alertmanager_config(stack_run))


def test_relay_resources_pass_the_policy_pack(stack_run: Run) -> None:
    relay = [r for r in stack_run.resources if f"-{APP}-" in r.name]
    assert relay
    for resource in relay:
        for policy in POLICIES:
            assert violations(policy, resource.typ, resource.inputs) == [], policy.name

"""Reading the committed rule file and dashboards: the format, and errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infra.config import InfraConfigError
from infra.monitoring import dashboard_config_map, prometheus_rule
from infra.monitoring_assets import (
    MAX_DASHBOARD_BYTES,
    MonitoringAssets,
    dns_name,
    load_dashboards,
    load_rule_groups,
    parse_dashboard,
    parse_rule_groups,
)

pytestmark = pytest.mark.infra

FIXTURE = Path(__file__).parent / "fixtures" / "monitoring"
GOOD_RULE = {"record": "slo:sli_error:ratio_rate5m", "expr": "vector(0)"}


def _file(*groups: object) -> str:
    return yaml.safe_dump({"groups": list(groups)})


def test_fixture_loads_in_file_order() -> None:
    assets = MonitoringAssets.load(FIXTURE)
    raw = yaml.safe_load((FIXTURE / "deploy/prometheus/slo-rules.yaml").read_text())["groups"]
    assert list(assets.rule_groups) == raw
    assert assets.rule_count() == 4
    assert [d.file_name for d in assets.dashboards] == ["gpu-cost.json", "slo-overview.json"]


def test_a_group_becomes_one_prometheus_rule_verbatim() -> None:
    (group, *_) = MonitoringAssets.load(FIXTURE).rule_groups
    rule = prometheus_rule(group, "mon")
    assert rule["metadata"]["name"] == "slo-sloth-slo-sli-recordings-serving-availability"
    assert rule["spec"] == {"groups": [group]}
    assert rule["metadata"]["labels"]["release"] == "monitoring"


def test_a_dashboard_becomes_a_labelled_config_map() -> None:
    dashboard = MonitoringAssets.load(FIXTURE).dashboards[1]
    config_map = dashboard_config_map(dashboard, "mon")
    assert config_map["metadata"]["name"] == "dashboard-slo-overview"
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert config_map["data"] == {"slo-overview.json": dashboard.text}


def test_missing_rule_file_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(InfraConfigError, match=r"slo-rules\.yaml does not exist.*generator"):
        load_rule_groups(tmp_path / "slo-rules.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups: [", "not valid YAML"),
        ("rules: []", "no top-level 'groups'"),
        ("groups: []", "no rule groups"),
        (_file({"rules": [GOOD_RULE]}), r"groups\[0\] needs a 'name'"),
        (_file({"name": "g", "rules": []}), "no 'rules' list"),
        (_file({"name": "g", "rules": [GOOD_RULE], "source_tenants": ["x"]}), "source_tenants"),
        (_file({"name": "g", "rules": [{**GOOD_RULE, "alert": "A"}]}), "exactly one of"),
        (_file({"name": "g", "rules": [{"alert": "A"}]}), r"rules\[0\] \(g\) has no 'expr'"),
        (_file({"name": "g", "rules": [{**GOOD_RULE, "for": "5m"}]}), "recording rule"),
        (_file({"name": "g", "rules": [{**GOOD_RULE, "severity": "page"}]}), "severity"),
        (_file({"name": "A b", "rules": [GOOD_RULE]}, {"name": "a-b", "rules": [GOOD_RULE]}),
         "collide"),
        (_file({"name": "x" * 70 + "1", "rules": [GOOD_RULE]},
               {"name": "x" * 70 + "2", "rules": [GOOD_RULE]}), "collide"),
    ],
)  # fmt: skip
def test_malformed_rule_file_names_the_field(text: str, message: str) -> None:
    with pytest.raises(InfraConfigError, match=message) as raised:
        parse_rule_groups(text, "deploy/prometheus/slo-rules.yaml")
    assert "slo-rules.yaml" in str(raised.value)


def test_dashboards_missing_or_malformed_fail(tmp_path: Path) -> None:
    with pytest.raises(InfraConfigError, match=r"no \*\.json dashboards"):
        load_dashboards(tmp_path)
    with pytest.raises(InfraConfigError, match="not valid JSON"):
        parse_dashboard("a.json", "{")
    with pytest.raises(InfraConfigError, match="not a Grafana dashboard"):
        parse_dashboard("a.json", json.dumps({"title": "x"}))
    with pytest.raises(InfraConfigError, match="cannot fit a ConfigMap"):
        parse_dashboard("a.json", " " * (MAX_DASHBOARD_BYTES + 1))
    with pytest.raises(InfraConfigError, match="ConfigMap key"):
        parse_dashboard("a b.json", json.dumps({"title": "x", "panels": []}))


@pytest.mark.parametrize(
    ("text", "name"),
    [("sloth-slo-alerts-serving-availability", "sloth-slo-alerts-serving-availability"),
     ("Serving_Availability", "serving-availability"), ("x" * 80, "x" * 63)],
)  # fmt: skip
def test_dns_names(text: str, name: str) -> None:
    assert dns_name(text) == name


def test_object_names_stay_within_63_characters() -> None:
    group = {"name": "sloth-slo-meta-recordings-" + "a" * 60, "rules": [GOOD_RULE]}
    name = prometheus_rule(group, "mon")["metadata"]["name"]
    assert name.startswith("slo-sloth-slo-meta-recordings-")
    assert len(name) == 63

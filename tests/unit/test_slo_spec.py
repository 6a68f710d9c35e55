"""SLO specs: the committed ones load; every invalid spec names its file, the field and the fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlre.errors import ConfigError
from mlre.slo.durations import format_ms, parse_ms, scale_ms
from mlre.slo.outputs import SPECS_DIR
from mlre.slo.spec import load_specs, parse_selector, selector_matches, series_labels

pytestmark = pytest.mark.unit

Mutation = Callable[[dict[str, Any]], None]

VALID: dict[str, Any] = {
    "apiVersion": "mlre/v1",
    "kind": "SLOSet",
    "service": "demo",
    "description": "A demo service.",
    "labels": {"team": "sre"},
    "slos": [
        {
            "name": "availability",
            "description": "Answers that are not fallbacks.",
            "objective": 99.5,
            "indicator": {
                "ratioMetric": {
                    "bad": 'sum(rate(req_total{route="fallback"}[{{.window}}]))',
                    "total": "sum(rate(req_total[{{.window}}]))",
                    "testSeries": {
                        "good": ['req_total{route="champion"}'],
                        "bad": ['req_total{route="fallback"}'],
                    },
                }
            },
            "alerting": {
                "name": "DemoAvailabilityBudgetBurn",
                "absent": {"name": "DemoAvailabilitySLIAbsent", "series": "req_total"},
            },
        },
        {
            "name": "freshness",
            "description": "Views newer than a day.",
            "objective": 99,
            "indicator": {
                "groupBy": ["view"],
                "thresholdMetric": {
                    "query": "time() - max by (view) (newest_seconds)",
                    "badWhen": {"op": "gt", "value": 86400},
                    "testSeries": [
                        {
                            "series": 'newest_seconds{view="v"}',
                            "good": -60,
                            "bad": -90000,
                            "relativeToTime": True,
                        }
                    ],
                },
            },
            "alerting": {
                "name": "DemoFreshnessBudgetBurn",
                "absent": {"disable": True, "reason": "views come and go"},
            },
        },
    ],
}


def _write(folder: Path, data: Any, name: str = "demo.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting a dotted path (`slos.0.objective`); value None deletes the key."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is None:
            del node[key]
        else:
            node[key] = value

    return mutate


RATIO = "slos.0.indicator.ratioMetric"
SLICES = "slos.1.indicator.thresholdMetric"
# (mutation, field path the message must name, words it must say)
INVALID: dict[str, tuple[Mutation, str, str]] = {
    "missing objective": (
        _set("slos.0.objective", None),
        "slos[0] (availability).objective",
        "required",
    ),
    "objective of 100": (
        _set("slos.0.objective", 100),
        "slos[0] (availability).objective",
        "less than 100",
    ),
    "misspelt field": (
        _set(f"{RATIO}.totl", "x"),
        "slos[0] (availability).indicator.ratioMetric.totl",
        "fields here: good, bad, total, testSeries",
    ),
    "good and bad": (
        _set(f"{RATIO}.good", "sum(rate(x[{{.window}}]))"),
        "indicator.ratioMetric",
        "exactly one of good or bad",
    ),
    "no window placeholder": (
        _set(f"{RATIO}.total", "sum(rate(req_total[5m]))"),
        "indicator.ratioMetric.total",
        "{{.window}}",
    ),
    "unknown placeholder": (
        _set(f"{RATIO}.total", "sum(rate(req_total[{{.window}}])) * {{.scale}}"),
        "ratioMetric.total",
        "{{.scale}}",
    ),
    "28-day window": (
        _set("slos.0.timeWindow", {"duration": "28d"}),
        "slos[0] (availability).timeWindow.duration",
        "30d",
    ),
    "lower-case alert name": (_set("slos.0.alerting.name", "demoBurn"), "alerting.name", "pattern"),
    "page that can never fire": (
        _set("slos.0.objective", 90),
        "slos[0] (availability).objective",
        "never fire",
    ),
    "groupBy not kept": (
        _set("slos.1.indicator.groupBy", ["region"]),
        "slos[1] (freshness).indicator.groupBy",
        "by (region)",
    ),
    "absent series not read": (
        _set("slos.0.alerting.absent.series", "other_total"),
        "alerting.absent.series",
        "none of the SLI's queries",
    ),
    "absent series matching no test series": (
        _set("slos.0.alerting.absent.series", 'req_total{route="canary"}'),
        "alerting.absent.series",
        "selects none of the indicator's testSeries",
    ),
    "absent disabled without reason": (
        _set("slos.1.alerting.absent.reason", None),
        "slos[1] (freshness).alerting.absent.reason",
        "say why",
    ),
    "absent without a name": (
        _set("slos.0.alerting.absent.name", None),
        "alerting.absent.name",
        "required",
    ),
    "absent for in words": (
        _set("slos.0.alerting.absent.for", "10 minutes"),
        "alerting.absent.for",
        "not a duration",
    ),
    "annotation templating $value": (
        _set("slos.0.alerting.annotations", {"summary": "{{ $value }} burning"}),
        "alerting.annotations.summary",
        "{{ $labels.<name> }}",
    ),
    "annotation reading a missing label": (
        _set("slos.0.alerting.annotations", {"summary": "{{ $labels.region }}"}),
        "alerting.annotations.summary",
        "['region']",
    ),
    "unknown remediation": (
        _set("slos.0.alerting.annotations", {"remediation": "reboot-the-cluster"}),
        "alerting.annotations.remediation",
        "not a remediation",
    ),
    "unknown page-alert remediation": (
        _set("slos.0.alerting.pageAlert", {"annotations": {"remediation": "panic"}}),
        "alerting.pageAlert.annotations.remediation",
        "rollback-canary",
    ),
    "reserved label": (
        _set("slos.0.labels", {"sloth_id": "x"}),
        "slos[0] (availability).labels",
        "written by the generator",
    ),
    "bad label name": (_set("labels", {"team-name": "x"}), "labels", "not a Prometheus label name"),
    "test series without bad or all": (
        _set(f"{RATIO}.testSeries.bad", []),
        "indicator.ratioMetric.testSeries",
        "good and (bad or all)",
    ),
    "test series a selector": (
        _set(f"{RATIO}.testSeries.good", ['req_total{route=~"champ.*"}']),
        "ratioMetric.testSeries.good[0]",
        "only label=",
    ),
    "test series of another metric": (
        _set(f"{RATIO}.testSeries.good", ["other_total"]),
        "ratioMetric.testSeries.good[0]",
        "none of the SLI's queries",
    ),
    "test series without the groupBy label": (
        _set(f"{SLICES}.testSeries.0.series", "newest_seconds"),
        "thresholdMetric.testSeries[0].series",
        "groupBy label 'view'",
    ),
    "threshold query with a placeholder": (
        _set(f"{SLICES}.query", "max(x[{{.window}}])"),
        "thresholdMetric.query",
        "no placeholder",
    ),
    "slice not dividing 5m": (
        _set(f"{SLICES}.timeSliceWindow", "7m"),
        "thresholdMetric.timeSliceWindow",
        "divide the smallest window",
    ),
    "bad comparison": (_set(f"{SLICES}.badWhen.op", ">"), "thresholdMetric.badWhen.op", "'gt'"),
    "budgeting method of the other kind": (
        _set("slos.0.budgetingMethod", "Timeslices"),
        "slos[0] (availability).budgetingMethod",
        "Occurrences",
    ),
    "both indicators": (
        _set(
            "slos.0.indicator.thresholdMetric",
            copy.deepcopy(VALID["slos"][1]["indicator"]["thresholdMetric"]),
        ),
        "slos[0] (availability).indicator",
        "exactly one of ratioMetric",
    ),
    "wrong apiVersion": (_set("apiVersion", "openslo/v1"), "apiVersion", "mlre/v1"),
    "no slos": (_set("slos", []), "slos", "at least 1"),
}


def _disable_both(doc: dict[str, Any]) -> None:
    _set("slos.0.alerting.pageAlert", {"disable": True})(doc)
    _set("slos.0.alerting.ticketAlert", {"disable": True})(doc)


INVALID["both alerts disabled"] = (
    _disable_both,
    "slos[0] (availability).alerting",
    "an SLO must alert somehow",
)


def test_the_committed_specs_load() -> None:
    specs = load_specs(SPECS_DIR)
    ids = [spec.id for spec in specs]
    assert len(ids) == len(set(ids))
    assert {
        "serving-availability",
        "serving-latency",
        "features-freshness",
        "model-quality",
    } <= set(ids)
    by_id = {spec.id: spec for spec in specs}
    availability = by_id["serving-availability"]
    assert availability.error_budget == 0.005
    assert availability.labels["team"] == "ml-platform"  # service labels merged into the SLO's
    assert availability.labels["category"] == "availability"
    assert [s.id for s in specs if s.slo.cloud_only] == ["gpu-pools-idle"]
    assert by_id["gpu-pools-idle"].alert_names == ["GpuIdleBudgetBurn"]  # no absent alert


def test_a_valid_spec_loads(tmp_path: Path) -> None:
    _write(tmp_path, VALID)
    specs = load_specs(tmp_path)
    assert [s.id for s in specs] == ["demo-availability", "demo-freshness"]
    assert specs[1].slo.indicator.threshold_metric is not None
    assert specs[1].slo.indicator.threshold_metric.time_slice_window == "1m"
    assert specs[0].slo.alerting.absent.for_ == "10m"
    assert specs[0].source == tmp_path / "demo.yaml"


@pytest.mark.parametrize(("mutate", "field", "words"), INVALID.values(), ids=INVALID.keys())
def test_an_invalid_spec_names_file_and_field(
    tmp_path: Path, mutate: Mutation, field: str, words: str
) -> None:
    doc = copy.deepcopy(VALID)
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as caught:
        load_specs(tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message, message
    assert words in message, message
    assert "mlre slo generate" in message  # what to do once fixed


@pytest.mark.parametrize(
    ("text", "words"),
    [("slos: [unclosed", "line 1"), ("- a list\n- not a mapping\n", "expected a mapping")],
    ids=["bad yaml", "not a mapping"],
)
def test_an_unreadable_spec_names_its_file(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=words) as caught:
        load_specs(tmp_path)
    assert str(path) in str(caught.value)


def test_duplicate_slo_ids_name_both_files(tmp_path: Path) -> None:
    first = _write(tmp_path, VALID, "a.yaml")
    doc = copy.deepcopy(VALID)
    doc["slos"] = [doc["slos"][1]]
    doc["slos"][0]["alerting"]["name"] = "OtherBurn"
    second = _write(tmp_path, doc, "b.yaml")
    with pytest.raises(ConfigError, match="'demo-freshness'") as caught:
        load_specs(tmp_path)
    assert str(first) in str(caught.value)
    assert str(second) in str(caught.value)


def test_duplicate_alert_names_name_both_slos(tmp_path: Path) -> None:
    doc = copy.deepcopy(VALID)
    doc["slos"][1]["alerting"]["name"] = "DemoAvailabilitySLIAbsent"
    _write(tmp_path, doc)
    with pytest.raises(
        ConfigError, match="'DemoAvailabilitySLIAbsent' is generated twice"
    ) as caught:
        load_specs(tmp_path)
    assert "demo-availability" in str(caught.value)
    assert "demo-freshness" in str(caught.value)


def test_a_folder_without_specs_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no SLO specs in") as caught:
        load_specs(tmp_path / "missing")
    assert "<service>.yaml" in str(caught.value)


def test_selectors_parse_and_match() -> None:
    name, matchers = parse_selector('x_total{job="a", route=~"fall.*", code!="200"}')
    assert name == "x_total"
    assert matchers == [("job", "=", "a"), ("route", "=~", "fall.*"), ("code", "!=", "200")]
    assert selector_matches('x_total{route=~"fall.*"}', 'x_total{route="fallback", job="a"}')
    assert not selector_matches('x_total{route!="fallback"}', 'x_total{route="fallback"}')
    assert not selector_matches("y_total", "x_total")
    assert series_labels('x{a="1"}') == ("x", {"a": "1"})
    with pytest.raises(ValueError, match="not a series selector"):
        parse_selector("rate(x[5m])")


@pytest.mark.parametrize(
    ("text", "ms"),
    [("5m", 300_000), ("30d", 2_592_000_000), ("1h30m", 5_400_000), ("2s500ms", 2_500)],
)
def test_durations_round_trip(text: str, ms: int) -> None:
    assert parse_ms(text) == ms
    assert format_ms(ms) == text


def test_durations_scale_and_refuse_nonsense() -> None:
    assert format_ms(scale_ms(parse_ms("5m"), 120)) == "2s500ms"
    assert format_ms(scale_ms(parse_ms("30d"), 60)) == "12h"
    for bad in ("", "5", "5 m", "m5", "1.5h"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_ms(bad)

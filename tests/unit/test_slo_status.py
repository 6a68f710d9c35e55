"""The error-budget status reads the generated recording rules back, per SLO, from answers in
Prometheus' own shape; SLOs with no series yet say so instead of looking healthy."""

from __future__ import annotations

import pytest

from mlre.prometheus_api import Sample
from mlre.settings import PROJECT_ROOT
from mlre.slo import load_specs
from mlre.slo.status import budget_exhausted, read_status, table_rows

pytestmark = pytest.mark.unit
SPECS = [s for s in load_specs(PROJECT_ROOT / "slos") if s.service == "serving"]


def _series(values: dict[str, float]) -> list[Sample]:
    return [
        Sample({"sloth_id": slo_id, "sloth_service": "serving"}, v) for slo_id, v in values.items()
    ]


ANSWERS = {
    "slo:objective:ratio": {"serving-availability": 0.995, "serving-latency": 0.99},
    "slo:error_budget:ratio": {"serving-availability": 0.005, "serving-latency": 0.01},
    "slo:period_error_budget_remaining:ratio": {"serving-availability": -0.4},
    "slo:sli_error:ratio_rate5m": {"serving-availability": 0.5},
    "slo:sli_error:ratio_rate1h": {"serving-availability": 0.09},
    "slo:sli_error:ratio_rate6h": {"serving-availability": 0.01},
    "slo:sli_error:ratio_rate3d": {"serving-availability": 0.005},
}
ALERTS = [
    {
        "state": "firing",
        "labels": {
            "alertname": "ServingAvailabilityErrorBudgetBurn",
            "sloth_id": "serving-availability",
            "severity": "page",
        },
    },
    {"state": "pending", "labels": {"alertname": "Other", "sloth_id": "serving-latency"}},
]


def _query(promql: str) -> list[Sample]:
    return _series(ANSWERS.get(promql, {}))


def test_status_per_slo_from_the_recording_rules() -> None:
    rows = {s.name: s for s in read_status(_query, ALERTS, SPECS)}
    availability = rows["availability"]
    assert availability.objective == pytest.approx(0.995)
    assert availability.sli == pytest.approx(0.91)  # 1 - the 1h error ratio
    assert availability.burn_rates == pytest.approx({"5m": 100.0, "1h": 18.0, "6h": 2.0, "3d": 1.0})
    assert availability.alerts == ("ServingAvailabilityErrorBudgetBurn (page)",)
    assert availability.verdict == "exhausted"  # -40 % of the budget left
    latency = rows["latency"]
    assert latency.verdict == "no data"  # no SLI series: never shown as healthy
    assert latency.alerts == ()  # a pending alert is not a firing one
    assert [s.name for s in budget_exhausted(list(rows.values()))] == ["availability"]


def test_table_rows_are_readable() -> None:
    row = next(
        r for r in table_rows(read_status(_query, ALERTS, SPECS)) if r["slo"] == "availability"
    )
    assert row == {
        "service": "serving",
        "slo": "availability",
        "objective": "99.5%",
        "sli (1h)": "91.000%",
        "budget left (30d)": "-40.0%",
        "burn 1h / 6h / 3d": "18.00x / 2.00x / 1.00x",
        "alerts": "ServingAvailabilityErrorBudgetBurn (page)",
        "verdict": "exhausted",
    }

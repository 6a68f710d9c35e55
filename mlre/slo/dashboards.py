"""Grafana dashboards from the SLO specs: one per service, reading the generated recording rules.

Pure dicts (Grafana's dashboard JSON model, schemaVersion 39): per SLO a row with the SLI now,
the error budget left over 30 days, the current burn rate, the SLI over time and the burn rate of
every alert window against the page and ticket thresholds. The datasource is a dashboard
variable, so the same JSON works in any Grafana (kube-prometheus-stack's sidecar provisions it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import count
from typing import Any

from mlre.slo.rules import BURN_TIERS, sli_error_metric
from mlre.slo.spec import SloSpec

Panel = dict[str, Any]
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_BURN_WINDOWS = ("5m", "1h", "6h", "3d")


def generate_dashboards(specs: Sequence[SloSpec]) -> dict[str, dict[str, Any]]:
    """`{file name: dashboard}`, one dashboard per service, in spec order."""
    services: dict[str, list[SloSpec]] = {}
    for spec in specs:
        services.setdefault(spec.service, []).append(spec)
    return {
        f"mlre-slo-{service}.json": service_dashboard(service, members)
        for service, members in services.items()
    }


def render_dashboard(dashboard: dict[str, Any]) -> str:
    """The dashboard as stable, indented JSON text."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def service_dashboard(service: str, specs: Sequence[SloSpec]) -> dict[str, Any]:
    """One service's dashboard: a row of panels per SLO."""
    ids = count(1)
    panels: list[Panel] = []
    y = 0
    for spec in specs:
        row, height = _slo_panels(spec, ids, y)
        panels.extend(row)
        y += height
    return {
        "id": None,
        "uid": f"mlre-slo-{service}"[:40],
        "title": f"mlre SLOs: {service}",
        "description": specs[0].service_description.strip(),
        "tags": ["mlre", "slo", service],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def _slo_panels(spec: SloSpec, ids: count[int], y: int) -> tuple[list[Panel], int]:
    """The row header and the five panels of one SLO, starting at height `y`."""
    selector = f'{{sloth_id="{spec.id}"}}'
    legend = _legend(spec)
    objective = spec.slo.objective / 100
    title = f"{spec.name}: {spec.slo.objective:g}% over {spec.slo.time_window.duration}"
    panels = [
        {
            "id": next(ids),
            "type": "row",
            "title": title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        },
        _stat(
            next(ids),
            "SLI (5m)",
            f"1 - {sli_error_metric('5m')}{selector}",
            legend=legend,
            steps=[(None, "red"), (objective, "green")],
            grid={"h": 6, "w": 4, "x": 0, "y": y + 1},
            description=spec.slo.description.strip(),
        ),
        _stat(
            next(ids),
            "Error budget left (30d)",
            f"slo:period_error_budget_remaining:ratio{selector}",
            legend=legend,
            steps=[(None, "red"), (0, "orange"), (0.25, "green")],
            grid={"h": 6, "w": 4, "x": 4, "y": y + 1},
        ),
        _stat(
            next(ids),
            "Burn rate now (5m)",
            f"slo:current_burn_rate:ratio{selector}",
            legend=legend,
            steps=[(None, "green"), (1, "orange"), (6, "red")],
            grid={"h": 6, "w": 4, "x": 8, "y": y + 1},
            unit="none",
        ),
        _timeseries(
            next(ids),
            "SLI",
            [
                (f"1 - {sli_error_metric(w)}{selector}", f"{w} {legend}".strip())
                for w in ("1h", "1d", "30d")
            ],
            {"h": 6, "w": 12, "x": 12, "y": y + 1},
            unit="percentunit",
            thresholds=[(None, "red"), (objective, "transparent")],
        ),
        _timeseries(
            next(ids),
            "Burn rate by alert window (page over 14.4x and 6x, ticket over 3x and 1x)",
            [
                (
                    f"{sli_error_metric(w)}{selector}\n/ on(sloth_id, sloth_slo, sloth_service) "
                    f"group_left\nslo:error_budget:ratio{selector}",
                    f"{w} {legend}".strip(),
                )
                for w in _BURN_WINDOWS
            ],
            {"h": 8, "w": 24, "x": 0, "y": y + 7},
            unit="none",
            thresholds=[(None, "transparent")]
            + [(tier.factor, _tier_color(tier.severity)) for tier in BURN_TIERS[::-1]],
        ),
    ]
    return panels, 15


def _stat(
    panel_id: int,
    title: str,
    expr: str,
    *,
    legend: str,
    steps: list[tuple[float | None, str]],
    grid: dict[str, int],
    unit: str = "percentunit",
    description: str = "",
) -> Panel:
    return {
        "id": panel_id,
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": _DATASOURCE,
        "gridPos": grid,
        "targets": [{"refId": "A", "expr": expr, "legendFormat": legend or "__auto"}],
        "fieldConfig": {
            "defaults": {"unit": unit, "decimals": 3, "thresholds": _thresholds(steps)},
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
    }


def _timeseries(
    panel_id: int,
    title: str,
    targets: list[tuple[str, str]],
    grid: dict[str, int],
    *,
    unit: str,
    thresholds: list[tuple[float | None, str]],
) -> Panel:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": _DATASOURCE,
        "gridPos": grid,
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": _thresholds(thresholds),
                "custom": {"thresholdsStyle": {"mode": "line"}},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }


def _thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"value": value, "color": color} for value, color in steps],
    }


def _legend(spec: SloSpec) -> str:
    return " ".join(f"{{{{{label}}}}}" for label in spec.slo.indicator.group_by)


def _tier_color(severity: str) -> str:
    return "red" if severity == "page" else "orange"

"""Error-budget status of every SLO, read back from Prometheus' recording rules and alerts.

The generated rules (`mlre.slo.rules`) record, per SLO (labels sloth_id/sloth_service/
sloth_slo), its objective, the SLI error ratio over each burn window and the share of the 30-day
budget left; this module turns those series and the alerts Prometheus holds into one row per SLO
(`mlre slo status`, the `slo-report` flow). Pure over a query function, so tests pass recorded
answers and the CLI a live server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlre.prometheus_api import Query, Sample
from mlre.slo.rules import id_labels, sli_error_metric
from mlre.slo.spec import SloSpec

BURN_WINDOWS = ("5m", "1h", "6h", "3d")


@dataclass(frozen=True)
class SloStatus:
    """One SLO now: objective, SLI, budget left, burn rates per window and firing alerts."""

    slo_id: str
    service: str
    name: str
    objective: float | None
    sli: float | None  # good share over the last hour (1 - error ratio)
    budget_remaining: float | None  # share of the 30-day budget left (negative: overspent)
    burn_rates: dict[str, float] = field(default_factory=dict)
    alerts: tuple[str, ...] = ()

    @property
    def has_data(self) -> bool:
        return self.sli is not None

    @property
    def verdict(self) -> str:
        """ok | burning (an alert fires) | exhausted (no budget left) | no data."""
        if not self.has_data:
            return "no data"
        if self.budget_remaining is not None and self.budget_remaining <= 0:
            return "exhausted"
        return "burning" if self.alerts else "ok"


def _by_id(samples: Sequence[Sample]) -> dict[str, float]:
    return {
        s.labels["sloth_id"]: s.value
        for s in samples
        if "sloth_id" in s.labels and math.isfinite(s.value)
    }


def _alerts_by_id(alerts: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for alert in alerts:
        labels = alert.get("labels", {})
        if alert.get("state") == "firing" and "sloth_id" in labels:
            severity = labels.get("severity") or labels.get("sloth_severity", "")
            name = f"{labels.get('alertname', '?')}" + (f" ({severity})" if severity else "")
            found.setdefault(labels["sloth_id"], []).append(name)
    return found


def read_status(
    query: Query, alerts: Sequence[Mapping[str, Any]], specs: Sequence[SloSpec]
) -> list[SloStatus]:
    """One row per spec (SLOs without series yet show as 'no data'), in the specs' order."""
    objective = _by_id(query("slo:objective:ratio"))
    budget = _by_id(query("slo:error_budget:ratio"))
    remaining = _by_id(query("slo:period_error_budget_remaining:ratio"))
    errors = {w: _by_id(query(sli_error_metric(w))) for w in (*BURN_WINDOWS, "1h")}
    firing = _alerts_by_id(alerts)
    rows = []
    for spec in specs:
        ids = id_labels(spec)
        slo_id = ids["sloth_id"]
        error_1h = errors["1h"].get(slo_id)
        allowed = budget.get(slo_id)
        burn = {
            w: errors[w][slo_id] / allowed for w in BURN_WINDOWS if slo_id in errors[w] and allowed
        }
        rows.append(
            SloStatus(
                slo_id=slo_id,
                service=ids["sloth_service"],
                name=ids["sloth_slo"],
                objective=objective.get(slo_id),
                sli=None if error_1h is None else 1.0 - error_1h,
                budget_remaining=remaining.get(slo_id),
                burn_rates=burn,
                alerts=tuple(sorted(firing.get(slo_id, []))),
            )
        )
    return rows


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def table_rows(statuses: Sequence[SloStatus]) -> list[dict[str, str]]:
    """Rows for a Prefect table artifact or the CLI's table."""
    return [
        {
            "service": s.service,
            "slo": s.name,
            "objective": _percent(s.objective, 1),
            "sli (1h)": _percent(s.sli, 3),
            "budget left (30d)": _percent(s.budget_remaining, 1),
            "burn 1h / 6h / 3d": " / ".join(
                f"{s.burn_rates[w]:.2f}x" if w in s.burn_rates else "-" for w in ("1h", "6h", "3d")
            ),
            "alerts": ", ".join(s.alerts) or "-",
            "verdict": s.verdict,
        }
        for s in statuses
    ]


def budget_exhausted(statuses: Sequence[SloStatus]) -> list[SloStatus]:
    """The SLOs whose 30-day error budget is spent (the error-budget policy acts on these)."""
    return [s for s in statuses if s.verdict == "exhausted"]

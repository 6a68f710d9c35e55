"""Flow `monitor-performance`: the champion's predictions joined with late labels, per window."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from flows import automations, slis
from flows._common import LabelParams, ModelParams, lake_source, mlflow_client, server_task
from mlre import monitoring, prediction_log, registry
from mlre.data.lake import read_events
from mlre.settings import get_settings


class MonitorParams(LabelParams, ModelParams):
    """Which version to judge, on which window of labelled predictions."""

    version: str | None = Field(None, description="Model version (default: the champion).")
    start: datetime | None = Field(None, description="Window start (default: end - lookback).")
    end: datetime | None = Field(
        None, description="Window end, exclusive (default: the last UTC midnight before now)."
    )
    now: datetime | None = Field(
        None, description="The clock for the default window (default: the real clock)."
    )
    lookback_days: int = Field(7, ge=1, description="Days judged when start is not given.")
    join_keys: list[str] = Field(
        default_factory=lambda: ["customer_id", "event_timestamp"],
        description="Columns matching a prediction to its label event.",
    )
    config: monitoring.MonitoringConfig = Field(default_factory=monitoring.MonitoringConfig)
    emit_events: bool = Field(True, description="Emit mlre.model.performance-degraded.")


@dataclass(frozen=True)
class MonitorOutcome:
    """The decision and what it was about."""

    model_name: str
    version: str
    degraded: bool
    reasons: list[str]
    windows: list[monitoring.WindowMetrics]
    baseline: monitoring.Baseline


def _window(params: MonitorParams) -> tuple[datetime, datetime]:
    """[start, end): default the `lookback_days` full UTC days before today."""
    now = params.now or datetime.now(UTC)
    end = params.end or now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return params.start or end - timedelta(days=params.lookback_days), end


@server_task("load-baseline", retries=2, retry_delay_seconds=[2, 10])
def load_baseline(model_name: str, version: str | None) -> tuple[str, monitoring.Baseline]:
    """(version, evaluation-time metrics): the champion unless a version is given."""
    client = mlflow_client()
    if version is not None:
        mv = registry.get_version(client, model_name, version)
    else:
        mv = registry.champion_version(client, model_name)
        if mv is None:
            raise monitoring.MonitoringError(
                f"Model {model_name!r} has no champion; pass `version` or promote one first."
            )
    metrics = client.get_run(mv.run_id).data.metrics
    try:
        return str(mv.version), monitoring.baseline_from(metrics, mv.tags or {})
    except monitoring.MonitoringError as exc:
        raise monitoring.MonitoringError(f"Model {model_name!r} v{mv.version}: {exc}") from exc


@task(name="join-labels")
def labelled_predictions(params: MonitorParams, model_name: str, version: str) -> pd.DataFrame:
    """The version's predictions of the window that have a label by now."""
    settings = get_settings()
    start, end = _window(params)
    predictions = prediction_log.read_predictions(
        settings.prediction_log_root, model_name, start, end
    )
    predictions = predictions[predictions["model_version"] == version]
    if predictions.empty:
        raise monitoring.MonitoringError(
            f"Model {model_name!r} v{version} has no predictions in [{start:%Y-%m-%d %H:%M}, "
            f"{end:%Y-%m-%d %H:%M}); run batch-inference for that window or pick another."
        )
    labels = read_events(lake_source(params.label_source), start=start, end=end)
    return monitoring.join_labels(predictions, labels, params.join_keys)


def metrics_rows(windows: list[monitoring.WindowMetrics], baseline: monitoring.Baseline) -> list:
    """Table rows: one per window, then the baseline, rounded for reading."""

    def fmt(value: float) -> float | None:
        return round(value, 4) if math.isfinite(value) else None

    rows: list[dict[str, Any]] = [
        {
            "window": w.window,
            "rows": w.rows,
            "positives": w.positives,
            "roc_auc": fmt(w.roc_auc),
            "pr_auc": fmt(w.pr_auc),
            "recall": fmt(w.recall),
            "precision": fmt(w.precision),
        }
        for w in windows
    ]
    rows.append(
        {
            "window": "baseline (evaluation)",
            "rows": None,
            "positives": None,
            "roc_auc": fmt(baseline.roc_auc),
            "pr_auc": fmt(baseline.pr_auc),
            "recall": fmt(baseline.recall),
            "precision": None,
        }
    )
    return rows


def decision_markdown(outcome: MonitorOutcome, window: tuple[datetime, datetime]) -> str:
    """The markdown artifact: verdict first, then the reasons."""
    head = "Performance degraded" if outcome.degraded else "Performance OK"
    return "\n".join(
        [
            f"# {head}: {outcome.model_name} v{outcome.version}",
            "",
            f"Labelled predictions in [{window[0]:%Y-%m-%d %H:%M}, {window[1]:%Y-%m-%d %H:%M}) "
            f"UTC; threshold {outcome.baseline.threshold:g}.",
            "",
            *[f"- {reason}" for reason in outcome.reasons],
        ]
    )


@flow(name="monitor-performance", log_prints=True, **slis.flow_run_hooks())
def monitor_performance(params: MonitorParams | None = None) -> MonitorOutcome:
    """Per-window metrics of the champion on labelled predictions vs its evaluation baseline."""
    params = params or MonitorParams()
    model_name = params.model_name or get_settings().model_name
    version, baseline = load_baseline(model_name, params.version)
    joined = labelled_predictions(params, model_name, version)
    start, end = _window(params)
    windows = monitoring.window_metrics(
        joined, baseline.threshold, start, end, params.config.window
    )
    create_table_artifact(
        key="performance-windows",
        table=metrics_rows(windows, baseline),
        description=f"{model_name} v{version}: labelled predictions per window vs evaluation.",
    )
    decision = monitoring.assess(windows, baseline, params.config)
    slis.quality(model_name, version, windows, baseline)
    outcome = MonitorOutcome(
        model_name, version, decision.degraded, decision.reasons, windows, baseline
    )
    create_markdown_artifact(
        key="performance-verdict", markdown=decision_markdown(outcome, (start, end))
    )
    if decision.degraded and params.emit_events:
        automations.emit_model_event(
            automations.DEGRADED_EVENT,
            model_name,
            version,
            decision.reasons,
            {"breached_windows": list(decision.breached_windows)},
        )
    return outcome

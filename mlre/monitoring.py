"""Prefect-free performance monitoring: join predictions with late labels, score windows, decide.

Labels arrive after the prediction (a chargeback takes days), so input drift can stay quiet while
the model gets worse (concept drift: the same inputs now mean something else). Only labelled
outcomes show that:

- `join_labels` matches prediction-log rows with their label events on the entity key and the
  event timestamp (batch predictions keep both; their `request_id` is a random id, not the
  transaction id);
- `window_metrics` computes, per window (e.g. per UTC day) and pooled over the whole range, rows,
  positives, ROC AUC, PR AUC and recall/precision at the version's threshold;
- `assess` is pure: it compares those with the metrics recorded when the version was evaluated
  and returns a `PerformanceDecision` with its reasons.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from datetime import datetime

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlre.errors import MlreError
from mlre.evaluation import compute_metrics

POOLED = "all"
LABEL_COLUMN = "is_fraud"
SCORE_COLUMN = "score"
# The metrics a window is judged on; names as compute_metrics returns them.
JUDGED_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "recall")


class MonitoringError(MlreError):
    """Performance cannot be assessed (no predictions, no labels, no baseline to compare with)."""


class MonitoringConfig(BaseModel):
    """Tolerances of the performance monitor; the one place these defaults live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_auc_drop: float = Field(0.05, ge=0.0, le=1.0, description="Allowed ROC AUC drop.")
    max_pr_auc_drop: float = Field(0.10, ge=0.0, le=1.0, description="Allowed PR AUC drop.")
    max_recall_drop: float = Field(0.15, ge=0.0, le=1.0, description="Allowed recall drop.")
    min_rows: int = Field(200, ge=1, description="Labelled rows a window needs to be judged.")
    min_positives: int = Field(10, ge=1, description="Positive labels a window needs.")
    min_breached_windows: int = Field(
        2, ge=1, description="Per-window breaches that flag degradation without the pooled one."
    )
    window: str = Field("1D", description="Window length (pandas offset alias), e.g. 1D, 12h.")


class Baseline(BaseModel):
    """Evaluation-time metrics of the version, and where they were read from."""

    model_config = ConfigDict(frozen=True)

    roc_auc: float
    pr_auc: float
    recall: float
    threshold: float
    source: str


class WindowMetrics(BaseModel):
    """Metrics of one window of labelled predictions (`window == "all"`: the pooled range)."""

    model_config = ConfigDict(frozen=True)

    window: str
    start: datetime
    end: datetime
    rows: int
    positives: int
    roc_auc: float
    pr_auc: float
    recall: float
    precision: float


class PerformanceDecision(BaseModel):
    """Verdict with the reasons a reader (or an event payload) needs."""

    model_config = ConfigDict(frozen=True)

    degraded: bool
    judged_windows: tuple[str, ...]
    breached_windows: tuple[str, ...]
    skipped_windows: tuple[str, ...]
    reasons: list[str]


# --------------------------------------------------------------------------------------------
# Joining and windowing
# --------------------------------------------------------------------------------------------


def join_labels(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    keys: Sequence[str] = ("customer_id", "event_timestamp"),
    label_column: str = LABEL_COLUMN,
) -> pd.DataFrame:
    """Prediction rows that have a label yet (inner join on keys), with the label as 0/1."""
    for side, frame, needed in (
        ("prediction log", predictions, [*keys, SCORE_COLUMN]),
        ("label events", labels, [*keys, label_column]),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise MonitoringError(
                f"The {side} lacks column(s) {missing} (it has {sorted(frame.columns)}); "
                "join keys and columns must match the prediction log and the label source."
            )
    left = predictions[[*keys, SCORE_COLUMN]].copy()
    right = labels[[*keys, label_column]].dropna(subset=[label_column])
    # A key seen twice in the labels would duplicate predictions and inflate the counts.
    right = right.drop_duplicates(list(keys), keep="last")
    for column in keys:
        if pd.api.types.is_datetime64_any_dtype(left[column]):
            left[column] = pd.to_datetime(left[column], utc=True)
            right[column] = pd.to_datetime(right[column], utc=True)
    joined = left.merge(right, on=list(keys), how="inner")
    joined[label_column] = joined[label_column].astype("int64")
    return joined


def _metrics_row(
    name: str, bounds: tuple[datetime, datetime], part: pd.DataFrame, threshold: float, label: str
) -> WindowMetrics:
    """One window's metrics (NaN AUCs when a class is missing)."""
    start, end = bounds
    if part.empty:
        nan = math.nan
        return WindowMetrics(window=name, start=start, end=end, rows=0, positives=0,
                             roc_auc=nan, pr_auc=nan, recall=nan, precision=nan)  # fmt: skip
    m = compute_metrics(part[label], part[SCORE_COLUMN], threshold)
    return WindowMetrics(
        window=name,
        start=start,
        end=end,
        rows=int(m["rows"]),
        positives=int(m["positives"]),
        roc_auc=m["roc_auc"],
        pr_auc=m["pr_auc"],
        recall=m["recall"],
        precision=m["precision"],
    )


def window_metrics(
    joined: pd.DataFrame,
    threshold: float,
    start: datetime,
    end: datetime,
    window: str = "1D",
    *,
    timestamp_column: str = "event_timestamp",
    label_column: str = LABEL_COLUMN,
) -> list[WindowMetrics]:
    """Metrics per window in [start, end) (empty windows included), then the pooled range."""
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    if hi <= lo:
        raise MonitoringError(f"Monitoring window is empty: start {lo} is not before end {hi}.")
    ts = pd.to_datetime(joined[timestamp_column], utc=True)
    edges = [*pd.date_range(lo, hi, freq=window, inclusive="left"), hi]
    rows = []
    for a, b in itertools.pairwise(edges):
        part = joined[(ts >= a) & (ts < b)]
        name = f"{a:%Y-%m-%dT%H:%M}"
        rows.append(_metrics_row(name, (a, b), part, threshold, label_column))
    inside = joined[(ts >= lo) & (ts < hi)]
    rows.append(_metrics_row(POOLED, (lo, hi), inside, threshold, label_column))
    return rows


# --------------------------------------------------------------------------------------------
# Baseline and decision
# --------------------------------------------------------------------------------------------


def baseline_from(
    run_metrics: Mapping[str, float], version_tags: Mapping[str, str], prefix: str = "test_"
) -> Baseline:
    """Evaluation-time metrics of a version: its run's held-out `test_` metrics + threshold."""
    needed = [f"{prefix}{m}" for m in JUDGED_METRICS]
    missing = [name for name in needed if name not in run_metrics]
    if missing:
        raise MonitoringError(
            f"The version's training run has no metric(s) {missing} (it has "
            f"{sorted(run_metrics)}); retrain with the train-model flow, which logs them."
        )
    if "threshold" not in version_tags:
        raise MonitoringError(
            "The model version has no 'threshold' tag; the training flow sets it. Tag the "
            "version with the decision threshold it was evaluated at."
        )
    return Baseline(
        roc_auc=float(run_metrics[f"{prefix}roc_auc"]),
        pr_auc=float(run_metrics[f"{prefix}pr_auc"]),
        recall=float(run_metrics[f"{prefix}recall"]),
        threshold=float(version_tags["threshold"]),
        source=f"training run metrics {', '.join(needed)}",
    )


def _breaches(row: WindowMetrics, baseline: Baseline, config: MonitoringConfig) -> list[str]:
    """Sentences for every metric of a window that fell further than its tolerance."""
    limits = {
        "roc_auc": config.max_auc_drop,
        "pr_auc": config.max_pr_auc_drop,
        "recall": config.max_recall_drop,
    }
    out = []
    for metric, allowed in limits.items():
        value, reference = getattr(row, metric), getattr(baseline, metric)
        if math.isfinite(value) and value < reference - allowed:
            out.append(
                f"{metric} {value:.3f} vs {reference:.3f} at evaluation "
                f"(drop {reference - value:.3f} > allowed {allowed:.3f})"
            )
    return out


def _judgeable(row: WindowMetrics, config: MonitoringConfig) -> bool:
    """Enough labelled rows and positives for the metrics to mean something."""
    return row.rows >= config.min_rows and row.positives >= config.min_positives


def assess(
    windows: Sequence[WindowMetrics], baseline: Baseline, config: MonitoringConfig | None = None
) -> PerformanceDecision:
    """Degraded when the pooled window breaches a tolerance, or enough single windows do; pure.

    The pooled window is the robust signal (most labels); per-window breaches catch a change
    that the pooled range dilutes, but one noisy day alone never flags (`min_breached_windows`).
    A range where no window has enough labels is a MonitoringError, never a silent "healthy".
    """
    config = config or MonitoringConfig()
    judged, skipped, breached, reasons = [], [], [], []
    pooled_breached = False
    for row in windows:
        if not _judgeable(row, config):
            skipped.append(row.window)
            continue
        judged.append(row.window)
        found = _breaches(row, baseline, config)
        if found:
            breached.append(row.window)
            pooled_breached = pooled_breached or row.window == POOLED
            label = "All windows pooled" if row.window == POOLED else f"Window {row.window}"
            reasons.append(
                f"{label} ({row.rows} rows, {row.positives} positives): {'; '.join(found)}."
            )
    if not judged:
        raise MonitoringError(
            f"No window has >= {config.min_rows} labelled rows and >= {config.min_positives} "
            f"positives (windows: {[(w.window, w.rows, w.positives) for w in windows]}); labels "
            "may not have arrived yet: monitor an older range or lower min_rows/min_positives."
        )
    single = [w for w in breached if w != POOLED]
    degraded = pooled_breached or len(single) >= config.min_breached_windows
    head = (
        f"Performance degraded against the evaluation baseline ({baseline.source})."
        if degraded
        else f"Performance within tolerance of the evaluation baseline ({baseline.source})."
    )
    pooled = "breached" if pooled_breached else "ok" if POOLED in judged else "not judged"
    summary = (
        f"{len(single)} of {len([w for w in judged if w != POOLED])} judged windows breached "
        f"(degraded at >= {config.min_breached_windows}); pooled range: {pooled}."
    )
    if skipped:
        summary += f" Skipped for too few labels: {skipped}."
    return PerformanceDecision(
        degraded=degraded,
        judged_windows=tuple(judged),
        breached_windows=tuple(breached),
        skipped_windows=tuple(skipped),
        reasons=[head, summary, *reasons],
    )

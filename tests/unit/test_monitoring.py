"""The performance decision is pure: window metrics and a baseline in, verdict and reasons out."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlre.monitoring import (
    POOLED,
    Baseline,
    MonitoringConfig,
    MonitoringError,
    WindowMetrics,
    assess,
    baseline_from,
    join_labels,
    window_metrics,
)

pytestmark = pytest.mark.unit

DAY = datetime(2026, 3, 2, tzinfo=UTC)
BASE = Baseline(roc_auc=0.90, pr_auc=0.50, recall=0.70, threshold=0.3, source="test")


def win(
    name: str = "d1",
    *,
    roc: float = 0.90,
    pr: float = 0.50,
    recall: float = 0.70,
    rows: int = 1000,
    positives: int = 50,
) -> WindowMetrics:
    """A window's metrics as window_metrics builds them."""
    return WindowMetrics(window=name, start=DAY, end=DAY + timedelta(days=1), rows=rows,
                         positives=positives, roc_auc=roc, pr_auc=pr, recall=recall,
                         precision=0.5)  # fmt: skip


def test_metrics_at_baseline_are_not_degraded() -> None:
    decision = assess([win("d1"), win("d2"), win(POOLED)], BASE)
    assert not decision.degraded
    assert decision.breached_windows == ()
    assert decision.judged_windows == ("d1", "d2", POOLED)
    assert "within tolerance" in decision.reasons[0]


@pytest.mark.parametrize(
    ("metric", "value", "word"),
    [("roc", 0.84, "roc_auc"), ("pr", 0.39, "pr_auc"), ("recall", 0.54, "recall")],
)
def test_pooled_drop_beyond_tolerance_is_degraded(metric: str, value: float, word: str) -> None:
    decision = assess([win("d1"), win(POOLED, **{metric: value})], BASE)
    assert decision.degraded
    assert decision.breached_windows == (POOLED,)
    assert any(word in r and "All windows pooled" in r for r in decision.reasons)


def test_drop_within_tolerance_is_not_degraded() -> None:
    decision = assess([win(POOLED, roc=0.86, pr=0.41, recall=0.56)], BASE)
    assert not decision.degraded


def test_one_bad_day_alone_does_not_flag_but_two_do() -> None:
    one = assess([win("d1", roc=0.7), win("d2"), win(POOLED)], BASE)
    two = assess([win("d1", roc=0.7), win("d2", roc=0.7), win(POOLED)], BASE)
    assert not one.degraded
    assert one.breached_windows == ("d1",)
    assert two.degraded
    assert two.breached_windows == ("d1", "d2")


def test_windows_with_too_few_labels_are_skipped_not_judged() -> None:
    config = MonitoringConfig(min_rows=100, min_positives=5)
    decision = assess([win("d1", roc=0.1, rows=20), win(POOLED)], BASE, config)
    assert decision.skipped_windows == ("d1",)
    assert not decision.degraded
    assert any("Skipped" in r for r in decision.reasons)


def test_no_window_with_enough_labels_is_an_error_not_healthy() -> None:
    with pytest.raises(MonitoringError, match="labels may not have arrived"):
        assess([win("d1", positives=2), win(POOLED, positives=2)], BASE)


def test_nan_auc_never_counts_as_a_breach() -> None:
    decision = assess([win(POOLED, roc=math.nan)], BASE)
    assert not decision.degraded


def test_baseline_from_run_metrics_and_threshold_tag() -> None:
    metrics = {"test_roc_auc": 0.91, "test_pr_auc": 0.4, "test_recall": 0.6, "test_rows": 10.0}
    baseline = baseline_from(metrics, {"threshold": "0.25"})
    assert (baseline.roc_auc, baseline.pr_auc, baseline.recall) == (0.91, 0.4, 0.6)
    assert baseline.threshold == 0.25
    with pytest.raises(MonitoringError, match="test_pr_auc"):
        baseline_from({"test_roc_auc": 0.9, "test_recall": 0.5}, {"threshold": "0.2"})
    with pytest.raises(MonitoringError, match="threshold"):
        baseline_from(metrics, {})


def test_join_and_windows_count_only_labelled_rows() -> None:
    ts = pd.to_datetime([DAY + timedelta(hours=h) for h in (1, 2, 25, 26)], utc=True)
    predictions = pd.DataFrame(
        {"customer_id": [1, 2, 3, 4], "event_timestamp": ts, "score": [0.9, 0.1, 0.8, 0.2]}
    )
    # Customer 4's label has not arrived yet; customer 2's appears twice (a correction).
    labels = pd.DataFrame(
        {
            "customer_id": [1, 2, 2, 3],
            "event_timestamp": ts[[0, 1, 1, 2]],
            "is_fraud": [1, 1, 0, 0],
        }
    )
    joined = join_labels(predictions, labels)
    assert sorted(joined["customer_id"]) == [1, 2, 3]
    assert joined.set_index("customer_id").loc[2, "is_fraud"] == 0  # the last label wins
    rows = window_metrics(joined, 0.5, DAY, DAY + timedelta(days=2))
    assert [(r.window, r.rows, r.positives) for r in rows] == [
        ("2026-03-02T00:00", 2, 1),
        ("2026-03-03T00:00", 1, 0),
        (POOLED, 3, 1),
    ]
    assert rows[0].roc_auc == 1.0
    assert np.isnan(rows[1].roc_auc)


def test_join_names_the_missing_column() -> None:
    with pytest.raises(MonitoringError, match="is_fraud"):
        join_labels(
            pd.DataFrame({"customer_id": [1], "event_timestamp": [DAY], "score": [0.1]}),
            pd.DataFrame({"customer_id": [1], "event_timestamp": [DAY]}),
        )

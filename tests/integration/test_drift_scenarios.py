"""Drift scenarios on generated data: each knob of the generator is caught (or not) as designed."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlre.data.generator import (
    DAILY_FEATURES,
    TIMESTAMP_COLUMN,
    GeneratorConfig,
    Scenario,
    generate_daily_stats,
)
from mlre.drift import (
    DriftConfig,
    DriftError,
    check_drift,
    column_drift,
    prediction_drift,
    sample_parquet,
    save_html,
)

pytestmark = pytest.mark.integration

SCHEMA = {c: ("categorical" if k == "string" else "numerical") for c, k in DAILY_FEATURES.items()}
# A Monday, and whole weeks per window so weekly seasonality is the same on both sides.
WINDOW_A = datetime(2026, 1, 5, tzinfo=UTC)
WINDOW_B = WINDOW_A + timedelta(days=28)
CUSTOMERS = 5_000
DAYS = 7  # 35k rows per side


def window(
    seed: int, start: datetime = WINDOW_B, days: int = DAYS, **scenario: object
) -> pd.DataFrame:
    """Daily stats of one window of the generator."""
    config = GeneratorConfig(
        n_customers=CUSTOMERS, start=start, days=days, seed=seed, scenario=Scenario(**scenario)
    )
    return generate_daily_stats(config)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """Window A: the training-time data."""
    return window(seed=1, start=WINDOW_A)


def by_column(result: object) -> dict[str, object]:
    """Column verdicts keyed by column name."""
    return {c.column: c for c in result.columns}


def test_no_drift_stays_quiet(reference: pd.DataFrame) -> None:
    result = check_drift(reference, window(seed=2), SCHEMA)
    assert not result.decision.drifted, result.decision.reasons
    assert result.decision.drifted_columns == ()
    assert all(c.method == "Wasserstein distance (normed)" for c in result.columns[:-1])
    assert result.columns[-1].method == "Jensen-Shannon distance"


def test_seasonal_data_without_drift_stays_quiet() -> None:
    reference = window(seed=1, start=WINDOW_A, days=14, seasonal_amplitude=0.8)
    current = window(seed=2, days=14, seasonal_amplitude=0.8)
    result = check_drift(reference, current, SCHEMA)
    assert not result.decision.drifted, result.decision.reasons
    assert result.decision.drifted_columns == ()


@pytest.mark.parametrize(
    "shifted",
    [
        ("txn_amount_avg_1d", "night_txn_share_1d", "avg_amount_30d"),
        (
            "txn_count_1d",
            "txn_amount_sum_1d",
            "txn_amount_max_1d",
            "distinct_merchants_1d",
            "foreign_txn_share_1d",
        ),
    ],
    ids=["3-of-10", "5-of-10"],
)
def test_covariate_shift_flags_exactly_the_shifted_columns(
    reference: pd.DataFrame, shifted: tuple[str, ...]
) -> None:
    current = window(seed=2, covariate_shift=dict.fromkeys(shifted, 0.6))
    result = check_drift(reference, current, SCHEMA)
    assert set(result.decision.drifted_columns) == set(shifted)
    assert result.decision.drifted_share == pytest.approx(len(shifted) / len(SCHEMA))
    # The dataset verdict follows the share of drifted columns (drift_share = 0.5).
    assert result.decision.drifted is (len(shifted) / len(SCHEMA) >= 0.5)


def test_missing_surge_is_flagged_although_evidently_ignores_it(reference: pd.DataFrame) -> None:
    current = window(seed=2, missing_share={"night_txn_share_1d": 0.4})
    result = check_drift(reference, current, SCHEMA)
    column = by_column(result)["night_txn_share_1d"]
    # Evidently drops NaNs before its test: the statistical verdict stays quiet ...
    assert not column.drifted
    assert column.missing_share_current == pytest.approx(0.4, abs=0.02)
    # ... so our own check must catch it and make the decision say so.
    assert column.missing_surge
    assert result.decision.drifted
    assert result.decision.missing_surges == ("night_txn_share_1d",)
    assert any("Missing-value surge" in r for r in result.decision.reasons)


def test_missing_surge_in_a_nullable_int_column(reference: pd.DataFrame) -> None:
    current = window(seed=2, missing_share={"txn_count_1d": 0.4})
    assert str(current["txn_count_1d"].dtype) == "Int64"
    result = check_drift(reference, current, SCHEMA)
    assert result.decision.missing_surges == ("txn_count_1d",)


def test_fully_missing_column_is_a_surge_not_a_crash(reference: pd.DataFrame) -> None:
    current = window(seed=2, missing_share={"foreign_txn_share_1d": 1.0})
    column = by_column(check_drift(reference, current, SCHEMA))["foreign_txn_share_1d"]
    assert column.missing_surge
    assert column.missing_share_current == 1.0


def test_new_category_is_flagged(reference: pd.DataFrame) -> None:
    current = window(seed=2, new_category="crypto_wallet", new_category_share=0.1)
    result = check_drift(reference, current, SCHEMA)
    column = by_column(result)["preferred_channel"]
    assert column.new_categories == ("crypto_wallet",)
    assert column.drifted
    assert result.decision.drifted
    assert result.decision.new_categories == {"preferred_channel": ("crypto_wallet",)}


def test_rare_new_category_is_still_flagged(reference: pd.DataFrame) -> None:
    # 2% of rows: too few to move Jensen-Shannon past 0.1, but never seen in training.
    current = window(seed=2, new_category="crypto_wallet", new_category_share=0.02)
    result = check_drift(reference, current, SCHEMA)
    assert "preferred_channel" in result.decision.drifted_columns
    assert result.decision.drifted


def test_gradual_drift_grows_and_is_flagged_late(reference: pd.DataFrame) -> None:
    windows = 5
    feature = "txn_amount_avg_1d"
    # One long window drifting 0.4 std end to end, cut into consecutive weeks.
    long = window(seed=2, days=DAYS * windows, gradual_drift={feature: 0.4})
    day = (long[TIMESTAMP_COLUMN] - long[TIMESTAMP_COLUMN].min()).dt.days // DAYS
    verdicts = [
        by_column(check_drift(reference, long[day == w], {feature: "numerical"}))[feature]
        for w in range(windows)
    ]
    scores = [v.score for v in verdicts]
    assert all(b > a - 0.02 for a, b in itertools.pairwise(scores)), scores
    assert scores[-1] > scores[0] + 0.2, scores
    assert not verdicts[0].drifted, scores
    assert verdicts[-1].drifted, scores
    assert verdicts[-2].drifted, scores


def test_concept_drift_does_not_move_inputs(reference: pd.DataFrame) -> None:
    # Concept drift changes only labels; the performance monitor catches it, not input drift.
    result = check_drift(reference, window(seed=2, concept_drift=1.0), SCHEMA)
    assert not result.decision.drifted, result.decision.reasons
    assert result.decision.drifted_columns == ()


def test_prediction_drift_on_scores() -> None:
    rng = np.random.default_rng(0)
    quiet = prediction_drift(rng.beta(2, 8, 20_000), rng.beta(2, 8, 20_000))
    shifted = prediction_drift(rng.beta(2, 8, 20_000), rng.beta(3, 6, 20_000))
    assert quiet.column == "score"
    assert not quiet.drifted
    assert shifted.drifted


def test_small_samples_use_p_values_in_the_right_direction() -> None:
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.normal(size=500)})
    same = column_drift(ref, pd.DataFrame({"x": rng.normal(size=500)}), {"x": "numerical"})[0]
    moved = column_drift(ref, pd.DataFrame({"x": rng.normal(1, 1, 500)}), {"x": "numerical"})[0]
    assert same.method == moved.method == "K-S p_value"
    assert not same.drifted
    assert moved.drifted
    assert moved.score < 0.05


def test_sample_parquet_is_seeded_and_reads_only_a_sample(
    reference: pd.DataFrame, tmp_path: object
) -> None:
    path = tmp_path / "ref.parquet"
    reference.to_parquet(path)
    first = sample_parquet([path], list(SCHEMA), 10_000, seed=3)
    again = sample_parquet(path, list(SCHEMA), 10_000, seed=3)
    other = sample_parquet(tmp_path, list(SCHEMA), 10_000, seed=4)
    assert len(first) == 10_000
    assert list(first.columns) == list(SCHEMA)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_save_html_writes_the_report(reference: pd.DataFrame, tmp_path: object) -> None:
    result = check_drift(reference, window(seed=2), SCHEMA, DriftConfig(sample_size=5_000))
    path = save_html(result.report, tmp_path / "drift.html")
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ref, cur: (ref.iloc[:0], cur), "reference data is empty"),
        (lambda ref, cur: (ref, cur.iloc[:0]), "current data is empty"),
        (lambda ref, cur: (ref, cur.drop(columns=["avg_amount_30d"])), "avg_amount_30d"),
        (
            lambda ref, cur: (ref, cur.assign(txn_count_1d=cur["txn_count_1d"].astype(str))),
            "numeric -> string",
        ),
    ],
    ids=["empty-reference", "empty-current", "missing-column", "changed-dtype"],
)
def test_bad_inputs_raise_instead_of_no_drift(
    reference: pd.DataFrame, change: object, message: str
) -> None:
    ref, cur = change(reference, reference.copy())
    with pytest.raises(DriftError, match=message):
        check_drift(ref, cur, SCHEMA)

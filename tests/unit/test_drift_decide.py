"""The dataset drift decision is pure: per-column verdicts in, verdict and reasons out."""

from __future__ import annotations

import math

import pytest

from mlre.drift import ColumnDrift, DriftConfig, DriftError, decide, verdict

pytestmark = pytest.mark.unit

WASSERSTEIN = "Wasserstein distance (normed)"


def col(
    name: str,
    score: float = 0.02,
    *,
    method: str = WASSERSTEIN,
    threshold: float = 0.1,
    miss_ref: float = 0.0,
    miss_cur: float = 0.0,
    new: tuple[str, ...] = (),
) -> ColumnDrift:
    """A column verdict built the way column_drift builds it."""
    drifted, borderline = verdict(method, score, threshold, 0.02)
    return ColumnDrift(
        column=name,
        kind="categorical" if new else "numerical",
        method=method,
        score=score,
        threshold=threshold,
        drifted=drifted,
        borderline=borderline,
        missing_share_reference=miss_ref,
        missing_share_current=miss_cur,
        missing_surge=miss_cur - miss_ref > 0.10,
        new_categories=new,
    )


@pytest.mark.parametrize(
    ("method", "score", "threshold", "expected"),
    [
        (WASSERSTEIN, 0.5, 0.1, (True, False)),
        (WASSERSTEIN, 0.1, 0.1, (True, True)),  # distances drift at score >= threshold
        (WASSERSTEIN, 0.09, 0.1, (False, True)),
        (WASSERSTEIN, 0.01, 0.1, (False, False)),
        ("Jensen-Shannon distance", 0.2, 0.1, (True, False)),
        ("K-S p_value", 0.001, 0.05, (True, False)),  # p-values drift below the threshold
        ("K-S p_value", 0.04, 0.05, (True, True)),
        ("K-S p_value", 0.06, 0.05, (False, True)),
        ("chi-square p_value", 0.9, 0.05, (False, False)),
        (WASSERSTEIN, math.nan, math.nan, (False, False)),
    ],
)
def test_verdict_reads_each_method_in_its_direction(
    method: str, score: float, threshold: float, expected: tuple[bool, bool]
) -> None:
    assert verdict(method, score, threshold, 0.02) == expected


def test_unknown_method_is_an_error() -> None:
    with pytest.raises(DriftError, match="Unknown Evidently drift method"):
        verdict("my-new-test", 0.3, 0.1, 0.02)


def test_quiet_columns_give_no_drift() -> None:
    decision = decide([col("a"), col("b"), col("c")])
    assert not decision.drifted
    assert decision.drifted_share == 0.0
    assert decision.drifted_columns == ()
    assert "not reached" in decision.reasons[0]


@pytest.mark.parametrize(
    ("drifted", "total", "share", "expected"),
    [(1, 4, 0.5, False), (2, 4, 0.5, True), (3, 4, 0.5, True), (1, 4, 0.25, True)],
)
def test_dataset_verdict_follows_drift_share(
    drifted: int, total: int, share: float, expected: bool
) -> None:
    columns = [col(f"c{i}", 0.4 if i < drifted else 0.01) for i in range(total)]
    decision = decide(columns, DriftConfig(drift_share=share))
    assert decision.drifted is expected
    assert decision.drifted_share == drifted / total
    assert decision.drifted_columns == tuple(f"c{i}" for i in range(drifted))


def test_missing_surge_alone_sets_drifted_with_its_own_reason() -> None:
    decision = decide([col("a", miss_cur=0.4), col("b"), col("c"), col("d")])
    assert decision.drifted
    assert decision.missing_surges == ("a",)
    assert decision.drifted_share == 0.25
    assert any(r.startswith("Missing-value surge in 'a'") for r in decision.reasons)


def test_small_missing_increase_is_not_a_surge() -> None:
    decision = decide([col("a", miss_ref=0.05, miss_cur=0.12), col("b")])
    assert not decision.drifted
    assert decision.missing_surges == ()


def test_new_category_alone_sets_drifted() -> None:
    channel = col("channel", 0.03, method="Jensen-Shannon distance", new=("crypto",))
    decision = decide([channel, col("a"), col("b")])
    assert decision.drifted
    assert decision.drifted_columns == ("channel",)
    assert decision.new_categories == {"channel": ("crypto",)}
    assert any("Never-seen categories" in r for r in decision.reasons)


def test_borderline_columns_are_listed_separately() -> None:
    decision = decide([col("a", 0.11), col("b", 0.09), col("c", 0.5)])
    assert decision.borderline_columns == ("a", "b")
    assert decision.drifted_columns == ("a", "c")
    assert any("Borderline" in r for r in decision.reasons)


def test_no_columns_is_an_error() -> None:
    with pytest.raises(DriftError, match="no column verdicts"):
        decide([])


def test_decide_is_pure() -> None:
    columns = [col("a", 0.4), col("b", miss_cur=0.5)]
    assert decide(columns) == decide(columns)

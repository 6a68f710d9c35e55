"""Metrics, threshold choice, slices, plots and the promotion gate on tiny in-memory data."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mlre.evaluation import (
    EvaluationError,
    EvaluationResult,
    GateConfig,
    choose_threshold,
    compute_metrics,
    decision_markdown,
    decision_tags,
    evaluate,
    gate,
    save_plots,
    scoring_latency,
    slice_metrics,
)

pytestmark = pytest.mark.unit

Y = np.array([0, 0, 1, 1])
P = np.array([0.1, 0.4, 0.35, 0.8])


def _result(
    roc_auc: float = 0.90,
    pr_auc: float = 0.50,
    brier: float = 0.05,
    *,
    slices: list[dict] | None = None,
    version: str = "2",
    window: str = "",
) -> EvaluationResult:
    metrics = {"roc_auc": roc_auc, "pr_auc": pr_auc, "brier": brier, "rows": 1000.0}
    return EvaluationResult(version, metrics, slices or [], 0.5, {}, window)


def _slice(segment: str, roc_auc: float, rows: int = 200) -> dict:
    return {"slice": "merchant_category", "segment": segment, "rows": rows, "positives": 10,
            "roc_auc": roc_auc, "pr_auc": 0.3}  # fmt: skip


def test_metrics_on_tiny_arrays_match_hand_computation() -> None:
    m = compute_metrics(Y, P, threshold=0.5)
    # Pairs (pos, neg): (0.35,0.1) ok, (0.35,0.4) wrong, (0.8,*) ok -> 3 of 4.
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (m["positives"], m["rows"]) == (2.0, 4.0)
    assert m["pr_auc"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["log_loss"] > 0


@pytest.mark.parametrize(
    ("threshold", "precision", "recall"),
    [(0.3, 2 / 3, 1.0), (0.5, 1.0, 0.5), (0.9, 0.0, 0.0)],
)
def test_thresholded_metrics_follow_the_threshold(threshold, precision, recall) -> None:
    m = compute_metrics(Y, P, threshold)
    assert (m["precision"], m["recall"]) == pytest.approx((precision, recall))


def test_single_class_gives_nan_auc_not_an_exception() -> None:
    m = compute_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(m["roc_auc"])
    assert math.isnan(m["pr_auc"])
    assert m["positives"] == 0.0


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [([], [], "empty"), ([0, 1], [0.5], "length"), ([0, 2], [0.1, 0.2], "0/1")],
)
def test_bad_inputs_raise_evaluation_error(y, p, match) -> None:
    with pytest.raises(EvaluationError, match=match):
        compute_metrics(y, p, 0.5)


@pytest.mark.parametrize(
    ("y", "p", "expected"),
    [
        # 0.35 catches both positives (F1 0.8); 0.8 catches one (F1 0.667).
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.35),
        # Perfect separation: the lowest positive score is the best threshold.
        ([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.9], 0.7),
    ],
)
def test_threshold_maximises_f1(y, p, expected) -> None:
    threshold = choose_threshold(y, p)
    assert threshold == pytest.approx(expected)
    best = max(compute_metrics(y, p, t)["f1"] for t in np.unique(p))
    assert compute_metrics(y, p, threshold)["f1"] == pytest.approx(best)


def test_threshold_needs_positive_labels() -> None:
    with pytest.raises(EvaluationError, match="no positive labels"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_slice_metrics_per_segment_and_missing_segment() -> None:
    frame = pd.DataFrame({"channel": ["a", "a", "b", "b", None, None]})
    y = [0, 1, 1, 1, 0, 1]
    p = [0.2, 0.9, 0.6, 0.4, 0.3, 0.1]
    table = slice_metrics(frame, y, p, "channel", threshold=0.5, min_rows=2).set_index("segment")
    assert list(table.index) == ["<missing>", "a", "b"]
    assert table.loc["a", "roc_auc"] == 1.0
    assert math.isnan(table.loc["b", "roc_auc"])  # only positives
    assert table.loc["b", "recall"] == 0.5
    assert table.loc["<missing>", "roc_auc"] == 0.0
    assert table["rows"].tolist() == [2, 2, 2]
    assert not table["small"].any()


def test_slice_metrics_names_a_missing_column() -> None:
    with pytest.raises(EvaluationError, match="'channel'"):
        slice_metrics(pd.DataFrame({"x": [1]}), [1], [0.5], "channel", 0.5)


def test_plots_are_written_as_png(tmp_path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.4 + rng.random(200) * 0.6, 0, 1)
    paths = save_plots(y, p, 0.5, tmp_path / "plots", "unit")
    assert sorted(path.name for path in paths) == [
        "calibration.png",
        "confusion_matrix.png",
        "pr.png",
        "roc.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000


def test_evaluate_and_latency_with_a_fitted_model() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=300), "segment": rng.choice(["u", "v"], 300)})
    y = (frame["x"] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    model = LogisticRegression().fit(frame[["x"]], y)

    class OnX:
        def predict_proba(self, X):
            return model.predict_proba(X[["x"]])

    result = evaluate(OnX(), frame, y, 0.5, ["segment"], version="7", latency_repeats=5)
    assert result.metrics["roc_auc"] > 0.85
    assert set(result.slice_frame()["segment"]) == {"u", "v"}
    assert result.version == "7"
    latency = scoring_latency(OnX(), frame, repeats=5)
    assert 0 < latency["single_row_p50_ms"] <= latency["single_row_p99_ms"]
    assert latency["batch_1000_p50_ms"] > 0


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


def test_first_model_gets_only_absolute_gates() -> None:
    decision = gate(_result(), None, GateConfig())
    assert decision.passed
    assert {c.name for c in decision.checks} == {"min_roc_auc", "min_pr_auc", "max_brier"}
    assert any("No champion yet" in reason for reason in decision.reasons)


@pytest.mark.parametrize(
    ("candidate", "failed", "text"),
    [
        (_result(roc_auc=0.65), "min_roc_auc", "ROC AUC 0.6500 is below the minimum 0.7000"),
        (_result(pr_auc=0.05), "min_pr_auc", "PR AUC 0.0500 is below the minimum 0.1000"),
        (_result(brier=0.2), "max_brier", "Brier score 0.2000 exceeds the maximum 0.1000"),
        (_result(roc_auc=math.nan), "min_roc_auc", "ROC AUC NaN is below"),
    ],
)
def test_absolute_minimums_refuse_with_numbers(candidate, failed, text) -> None:
    decision = gate(candidate, None, GateConfig())
    assert not decision.passed
    assert [c.name for c in decision.checks if not c.passed] == [failed]
    assert any(text in reason for reason in decision.reasons)
    assert decision.reasons[0] == "Refused: 1 of 3 checks failed."


@pytest.mark.parametrize(
    ("candidate_auc", "candidate_pr", "passed", "failed"),
    [
        (0.895, 0.50, True, []),  # 0.005 worse: within the 0.01 tolerance
        (0.88, 0.50, False, ["roc_auc_vs_champion"]),  # 0.02 worse
        (0.92, 0.47, False, ["pr_auc_vs_champion"]),  # PR AUC 0.03 worse
        (0.95, 0.60, True, []),  # better everywhere
    ],
)
def test_champion_tolerance(candidate_auc, candidate_pr, passed, failed) -> None:
    decision = gate(_result(candidate_auc, candidate_pr), _result(0.90, 0.50, version="1"))
    assert decision.passed is passed
    assert [c.name for c in decision.checks if not c.passed] == failed


def test_champion_regression_reason_reads_as_a_sentence() -> None:
    decision = gate(_result(0.88), _result(0.90, version="1"))
    assert (
        "ROC AUC: candidate 0.8800 vs champion 0.9000 (change -0.0200, beyond the allowed "
        "drop of 0.0100)." in decision.reasons
    )


def test_slice_regression_refuses_and_small_slices_are_skipped() -> None:
    champion = _result(
        slices=[_slice("grocery", 0.90), _slice("travel", 0.90), _slice("fuel", 0.9, rows=20)],
        version="1",
    )
    candidate = _result(
        slices=[_slice("grocery", 0.89), _slice("travel", 0.80), _slice("fuel", 0.5, rows=20)]
    )
    decision = gate(candidate, champion, GateConfig())
    assert not decision.passed
    failed = [c.name for c in decision.checks if not c.passed]
    assert failed == ["slice_roc_auc.merchant_category.travel"]
    assert any("merchant_category=travel" in r and "-0.1000" in r for r in decision.reasons)
    assert any(
        r.startswith("Skipped slice merchant_category=fuel: 20 rows") for r in decision.reasons
    )
    assert "slice_roc_auc.merchant_category.fuel" not in {c.name for c in decision.checks}


def test_slice_threshold_comes_from_config() -> None:
    champion = _result(slices=[_slice("travel", 0.90)], version="1")
    candidate = _result(slices=[_slice("travel", 0.80)])
    assert gate(candidate, champion, GateConfig(max_slice_auc_drop=0.2)).passed
    assert not gate(candidate, champion, GateConfig(min_slice_rows=10)).passed
    assert gate(candidate, champion, GateConfig(min_slice_rows=500)).passed


def test_different_windows_cannot_be_compared() -> None:
    decision = gate(_result(window="w2"), _result(window="w1", version="1"))
    assert not decision.passed
    assert any("re-evaluate both on the same window" in r for r in decision.reasons)


def test_gate_is_pure() -> None:
    candidate, champion = _result(0.88), _result(0.9, version="1")
    first, second = gate(candidate, champion), gate(candidate, champion)
    assert first == second
    assert candidate == _result(0.88)
    assert champion == replace(_result(0.9), version="1")


def test_gate_config_is_frozen_and_validated() -> None:
    config = GateConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.min_roc_auc = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="min_roc_auc"):
        GateConfig(min_roc_auc=1.5)


def test_markdown_and_tags_render_the_decision() -> None:
    champion = _result(0.90, slices=[_slice("travel", 0.9)], version="1")
    candidate = _result(0.85, slices=[_slice("travel", 0.9)])
    decision = gate(candidate, champion)
    text = decision_markdown(decision, candidate, champion)
    assert text.startswith("# Promotion gate: REFUSED")
    assert "| roc_auc_vs_champion | no | -0.0500 | -0.0100 |" in text
    assert "| roc_auc | 0.8500 | 0.9000 |" in text
    tags = decision_tags(decision)
    assert tags["gate.passed"] == "false"
    assert "ROC AUC: candidate 0.8500" in tags["gate.reasons"]
    assert tags["gate.check.roc_auc_vs_champion"].startswith("fail value=-0.0500")
    assert tags["gate.check.slice_roc_auc.merchant_category.travel"].startswith("pass")
    assert all(len(value) <= 5000 for value in tags.values())

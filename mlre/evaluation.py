"""Model evaluation and the promotion gate: metrics, slices, plots, and a pure pass/refuse decision.

Nothing here knows about MLflow or Prefect: `evaluate` turns a model and a labelled frame into an
`EvaluationResult`, `gate` compares a candidate with the champion and returns a `GateDecision`
whose reasons are sentences with numbers, and `decision_markdown` / `decision_tags` render that
decision for a Prefect artifact and MLflow model-version tags.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mlre.errors import MlreError

MISSING_SEGMENT = "<missing>"
SLICE_COLUMNS: tuple[str, ...] = ("slice", "segment", "rows", "positives", "roc_auc", "pr_auc")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]")
_TAG_VALUE_LIMIT = 5000  # MLflow rejects longer model-version tag values


class EvaluationError(MlreError):
    """Evaluation inputs are unusable (length mismatch, missing slice column, no rows)."""


class ProbabilisticModel(Protocol):
    """Anything with sklearn's `predict_proba` (a fitted Pipeline, a loaded sklearn model)."""

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# Scores and metrics
# --------------------------------------------------------------------------------------------


def score(model: ProbabilisticModel, frame: pd.DataFrame) -> np.ndarray:
    """Probability of class 1 for every row of `frame`."""
    if len(frame) == 0:
        raise EvaluationError("score: the frame has no rows; pass at least one row to score.")
    return np.asarray(model.predict_proba(frame))[:, 1].astype(np.float64)


def _percentiles_ms(seconds: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def scoring_latency(
    model: ProbabilisticModel, frame: pd.DataFrame, repeats: int = 50
) -> dict[str, float]:
    """p50/p99 milliseconds of a single-row call and of a 1,000-row batch call."""
    if len(frame) == 0 or repeats < 1:
        raise EvaluationError(
            f"scoring_latency: need rows and repeats >= 1 (got {len(frame)} rows, "
            f"repeats={repeats})."
        )
    single, batch = [], []
    batch_frame = frame.sample(n=1000, replace=len(frame) < 1000, random_state=0)
    model.predict_proba(frame.iloc[[0]])  # warm-up: first call pays lazy imports and caches
    for i in range(repeats):
        row = frame.iloc[[i % len(frame)]]
        start = time.perf_counter()
        model.predict_proba(row)
        single.append(time.perf_counter() - start)
    # Batches are ~100x slower than single rows; a tenth of the repeats gives a stable p50.
    for _ in range(max(3, repeats // 10)):
        start = time.perf_counter()
        model.predict_proba(batch_frame)
        batch.append(time.perf_counter() - start)
    single_p50, single_p99 = _percentiles_ms(single)
    batch_p50, batch_p99 = _percentiles_ms(batch)
    return {
        "single_row_p50_ms": single_p50,
        "single_row_p99_ms": single_p99,
        "batch_1000_p50_ms": batch_p50,
        "batch_1000_p99_ms": batch_p99,
    }


def _as_arrays(y: Iterable[Any], p: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.int64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise EvaluationError(
            f"Labels and scores differ in length ({y_arr.size} vs {p_arr.size}); score the same "
            "rows you take the labels from."
        )
    if y_arr.size == 0:
        raise EvaluationError("No rows to evaluate; the evaluation window is empty.")
    if not np.isin(y_arr, (0, 1)).all():
        raise EvaluationError("Labels must be 0/1; map the label column to integers first.")
    return y_arr, p_arr


def compute_metrics(y: Iterable[Any], p: Iterable[Any], threshold: float) -> dict[str, float]:
    """Ranking, calibration and thresholded metrics; AUCs are NaN when only one class is present."""
    y_arr, p_arr = _as_arrays(y, p)
    both = np.unique(y_arr).size == 2
    has_positive = bool(y_arr.any())
    predicted = (p_arr >= threshold).astype(np.int64)
    clipped = np.clip(p_arr, 1e-15, 1 - 1e-15)
    return {
        "roc_auc": float(roc_auc_score(y_arr, p_arr)) if both else math.nan,
        "pr_auc": float(average_precision_score(y_arr, p_arr)) if has_positive else math.nan,
        "log_loss": float(log_loss(y_arr, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y_arr, p_arr, pos_label=1)),
        "precision": float(precision_score(y_arr, predicted, zero_division=0)),
        "recall": float(recall_score(y_arr, predicted, zero_division=0)),
        "f1": float(f1_score(y_arr, predicted, zero_division=0)),
        "positives": float(y_arr.sum()),
        "rows": float(y_arr.size),
    }


def choose_threshold(y: Iterable[Any], p: Iterable[Any]) -> float:
    """The score threshold that maximises F1 (ties: the highest threshold, i.e. fewer alerts)."""
    y_arr, p_arr = _as_arrays(y, p)
    if not y_arr.any():
        raise EvaluationError(
            "Cannot choose a threshold: the validation window has no positive labels; "
            "widen the window (validation_days) or use more data."
        )
    precision, recall, thresholds = precision_recall_curve(y_arr, p_arr)
    # The last (precision=1, recall=0) point has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


def slice_metrics(
    frame: pd.DataFrame,
    y: Iterable[Any],
    p: Iterable[Any],
    slice_column: str,
    threshold: float,
    *,
    min_rows: int = 50,
) -> pd.DataFrame:
    """Metrics per segment of one column; `small` marks segments below `min_rows`."""
    if slice_column not in frame.columns:
        raise EvaluationError(
            f"Slice column {slice_column!r} is not in the evaluation frame (columns: "
            f"{sorted(frame.columns)}); keep it as a passthrough column."
        )
    y_arr, p_arr = _as_arrays(y, p)
    if len(frame) != y_arr.size:
        raise EvaluationError(
            f"The frame has {len(frame)} rows but {y_arr.size} labels; pass aligned inputs."
        )
    segments = frame[slice_column].astype("object").where(frame[slice_column].notna())
    segments = segments.fillna(MISSING_SEGMENT).astype(str).to_numpy()
    rows = []
    for segment in sorted(set(segments)):
        mask = segments == segment
        ys, ps = y_arr[mask], p_arr[mask]
        both = np.unique(ys).size == 2
        rows.append(
            {
                "slice": slice_column,
                "segment": segment,
                "rows": int(mask.sum()),
                "positives": int(ys.sum()),
                "roc_auc": float(roc_auc_score(ys, ps)) if both else math.nan,
                "pr_auc": float(average_precision_score(ys, ps)) if ys.any() else math.nan,
                "recall": (
                    float(recall_score(ys, (ps >= threshold).astype(int), zero_division=0))
                    if ys.any()
                    else math.nan
                ),
                "small": bool(mask.sum() < min_rows),
            }
        )
    return pd.DataFrame(rows, columns=[*SLICE_COLUMNS, "recall", "small"])


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def save_plots(
    y: Iterable[Any], p: Iterable[Any], threshold: float, out_dir: Path, title: str
) -> list[Path]:
    """ROC, precision-recall, calibration and confusion-matrix PNGs; returns their paths."""
    import matplotlib

    # Agg never needs a display; chosen here, not at import, so importers keep their backend.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    y_arr, p_arr = _as_arrays(y, p)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = (p_arr >= threshold).astype(np.int64)
    plots = {
        "roc.png": lambda ax: RocCurveDisplay.from_predictions(y_arr, p_arr, ax=ax),
        "pr.png": lambda ax: PrecisionRecallDisplay.from_predictions(y_arr, p_arr, ax=ax),
        "calibration.png": lambda ax: CalibrationDisplay.from_predictions(
            y_arr, p_arr, n_bins=10, strategy="quantile", ax=ax
        ),
        "confusion_matrix.png": lambda ax: ConfusionMatrixDisplay.from_predictions(
            y_arr, predicted, labels=[0, 1], ax=ax, colorbar=False
        ),
    }
    paths = []
    for name, draw in plots.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        try:
            draw(ax)
            ax.set_title(f"{title} — {name.removesuffix('.png')} (threshold {threshold:.3f})")
            path = out_dir / name
            fig.savefig(path, dpi=80, bbox_inches="tight")
            paths.append(path)
        finally:
            plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------
# Evaluation result and the gate
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Metrics of one model version on one window, with per-slice metrics and latency."""

    version: str | None
    metrics: dict[str, float]
    slices: pd.DataFrame | list[dict[str, Any]]
    threshold: float
    latency: dict[str, float] = field(default_factory=dict)
    window: str = ""  # e.g. "2026-01-17/2026-01-20": champion and candidate must share it

    def slice_frame(self) -> pd.DataFrame:
        """Slices as a DataFrame whatever form they were stored in."""
        if isinstance(self.slices, pd.DataFrame):
            return self.slices
        return pd.DataFrame(list(self.slices), columns=None if self.slices else SLICE_COLUMNS)


def evaluate(
    model: ProbabilisticModel,
    frame: pd.DataFrame,
    y: Iterable[Any],
    threshold: float,
    slice_columns: Sequence[str] = (),
    *,
    version: str | None = None,
    window: str = "",
    latency_repeats: int = 20,
    min_slice_rows: int = 50,
) -> EvaluationResult:
    """Score `frame` and collect metrics, slices and (when repeats > 0) scoring latency."""
    p = score(model, frame)
    metrics = compute_metrics(y, p, threshold)
    parts = [
        slice_metrics(frame, y, p, c, threshold, min_rows=min_slice_rows) for c in slice_columns
    ]
    slices = pd.concat(parts, ignore_index=True) if parts else slice_metrics_empty()
    latency = scoring_latency(model, frame, latency_repeats) if latency_repeats > 0 else {}
    return EvaluationResult(version, metrics, slices, float(threshold), latency, window)


def slice_metrics_empty() -> pd.DataFrame:
    """A slice table with no segments (no slice columns asked for)."""
    return pd.DataFrame(columns=[*SLICE_COLUMNS, "recall", "small"])


class GateConfig(BaseModel):
    """Promotion thresholds; the one place their defaults live."""

    model_config = ConfigDict(frozen=True)

    min_roc_auc: float = Field(0.70, ge=0, le=1, description="Absolute ROC AUC floor.")
    min_pr_auc: float = Field(0.10, ge=0, le=1, description="Absolute PR AUC floor.")
    max_brier: float = Field(0.10, ge=0, le=1, description="Absolute Brier score ceiling.")
    max_auc_drop: float = Field(0.01, ge=0, description="Allowed ROC AUC loss vs the champion.")
    max_pr_auc_drop: float = Field(0.02, ge=0, description="Allowed PR AUC loss vs the champion.")
    max_slice_auc_drop: float = Field(0.05, ge=0, description="Allowed per-slice ROC AUC loss.")
    min_slice_rows: int = Field(50, ge=1, description="Slices smaller than this are skipped.")


@dataclass(frozen=True)
class Check:
    """One gate check: its value against its limit, and a sentence saying so."""

    name: str
    passed: bool
    value: float
    limit: float
    message: str = ""


@dataclass(frozen=True)
class GateDecision:
    """Promote or not, why (sentences with numbers), and every check that was made."""

    passed: bool
    reasons: list[str]
    checks: list[Check]


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4f}"


def _floor_check(name: str, metric: str, value: float, limit: float) -> Check:
    ok = not math.isnan(value) and value >= limit
    verb = "meets" if ok else "is below"
    return Check(name, ok, value, limit, f"{metric} {_fmt(value)} {verb} the minimum {limit:.4f}.")


def _ceiling_check(name: str, metric: str, value: float, limit: float) -> Check:
    ok = not math.isnan(value) and value <= limit
    verb = "is within" if ok else "exceeds"
    return Check(name, ok, value, limit, f"{metric} {_fmt(value)} {verb} the maximum {limit:.4f}.")


def _drop_check(name: str, what: str, candidate: float, champion: float, tol: float) -> Check:
    """Candidate minus champion must be >= -tol (a NaN on either side fails: nothing to compare)."""
    delta = candidate - champion
    ok = not math.isnan(delta) and delta >= -tol
    verb = "within" if ok else "beyond"
    message = (
        f"{what}: candidate {_fmt(candidate)} vs champion {_fmt(champion)} "
        f"(change {delta:+.4f}, {verb} the allowed drop of {tol:.4f})."
    )
    return Check(name, ok, delta, -tol, message)


def _absolute_checks(candidate: EvaluationResult, config: GateConfig) -> list[Check]:
    m = candidate.metrics
    nan = math.nan
    return [
        _floor_check("min_roc_auc", "ROC AUC", m.get("roc_auc", nan), config.min_roc_auc),
        _floor_check("min_pr_auc", "PR AUC", m.get("pr_auc", nan), config.min_pr_auc),
        _ceiling_check("max_brier", "Brier score", m.get("brier", nan), config.max_brier),
    ]


def _slice_checks(
    candidate: EvaluationResult, champion: EvaluationResult, config: GateConfig
) -> tuple[list[Check], list[str]]:
    """Per-segment ROC AUC vs the champion; small or single-class segments are skipped, noted."""
    cand, champ = candidate.slice_frame(), champion.slice_frame()
    if cand.empty or champ.empty:
        return [], []
    merged = cand.merge(champ, on=["slice", "segment"], suffixes=("_cand", "_champ"))
    checks, notes = [], []
    for row in merged.sort_values(["slice", "segment"]).itertuples(index=False):
        label = f"{row.slice}={row.segment}"
        rows = min(int(row.rows_cand), int(row.rows_champ))
        if rows < config.min_slice_rows:
            notes.append(
                f"Skipped slice {label}: {rows} rows is fewer than the {config.min_slice_rows} "
                "needed for a stable AUC."
            )
            continue
        if math.isnan(row.roc_auc_cand) or math.isnan(row.roc_auc_champ):
            notes.append(f"Skipped slice {label}: only one class present, ROC AUC undefined.")
            continue
        checks.append(
            _drop_check(
                f"slice_roc_auc.{row.slice}.{row.segment}",
                f"ROC AUC on slice {label} ({rows} rows)",
                float(row.roc_auc_cand),
                float(row.roc_auc_champ),
                config.max_slice_auc_drop,
            )
        )
    return checks, notes


def gate(
    candidate: EvaluationResult,
    champion: EvaluationResult | None,
    config: GateConfig | None = None,
) -> GateDecision:
    """Decide whether the candidate may replace the champion (pure: no I/O, no clock)."""
    config = config or GateConfig()
    checks = _absolute_checks(candidate, config)
    notes: list[str] = []
    if champion is None:
        notes.append("No champion yet: only the absolute minimums apply to this first model.")
    else:
        if candidate.window and champion.window and candidate.window != champion.window:
            checks.append(
                Check(
                    "same_window",
                    False,
                    math.nan,
                    math.nan,
                    f"Candidate was evaluated on window {candidate.window} but the champion on "
                    f"{champion.window}; re-evaluate both on the same window.",
                )
            )
        nan = math.nan
        c, h = candidate.metrics, champion.metrics
        checks.append(
            _drop_check(
                "roc_auc_vs_champion",
                "ROC AUC",
                c.get("roc_auc", nan),
                h.get("roc_auc", nan),
                config.max_auc_drop,
            )
        )
        checks.append(
            _drop_check(
                "pr_auc_vs_champion",
                "PR AUC",
                c.get("pr_auc", nan),
                h.get("pr_auc", nan),
                config.max_pr_auc_drop,
            )
        )
        slice_checks, slice_notes = _slice_checks(candidate, champion, config)
        checks.extend(slice_checks)
        notes.extend(slice_notes)
    failed = [check for check in checks if not check.passed]
    if failed:
        summary = f"Refused: {len(failed)} of {len(checks)} checks failed."
        reasons = [summary, *(check.message for check in failed), *notes]
    else:
        summary = f"Passed: all {len(checks)} checks passed."
        reasons = [summary, *(check.message for check in checks), *notes]
    return GateDecision(passed=not failed, reasons=reasons, checks=checks)


# --------------------------------------------------------------------------------------------
# Rendering the decision
# --------------------------------------------------------------------------------------------


def decision_markdown(
    decision: GateDecision, candidate: EvaluationResult, champion: EvaluationResult | None
) -> str:
    """A Markdown report of the decision: verdict, reasons, checks, and the metrics side by side."""
    verdict = "PASSED" if decision.passed else "REFUSED"
    lines = [
        f"# Promotion gate: {verdict}",
        "",
        f"Candidate version `{candidate.version}`"
        + (f" vs champion version `{champion.version}`" if champion else " (no champion)")
        + (f" on window `{candidate.window}`" if candidate.window else "")
        + ".",
        "",
        "## Reasons",
        *(f"- {reason}" for reason in decision.reasons),
        "",
        "## Checks",
        "| check | passed | value | limit |",
        "|---|---|---|---|",
        *(
            f"| {c.name} | {'yes' if c.passed else 'no'} | {_fmt(c.value)} | {_fmt(c.limit)} |"
            for c in decision.checks
        ),
        "",
        "## Metrics",
        "| metric | candidate | champion |",
        "|---|---|---|",
    ]
    for name, value in candidate.metrics.items():
        other = _fmt(champion.metrics.get(name, math.nan)) if champion else "-"
        lines.append(f"| {name} | {_fmt(value)} | {other} |")
    return "\n".join(lines) + "\n"


def _tag_key(name: str) -> str:
    return _TAG_UNSAFE.sub("_", name)


def decision_tags(decision: GateDecision) -> dict[str, str]:
    """MLflow model-version tags: `gate.passed`, `gate.reasons` and one `gate.check.<name>` each."""
    tags = {
        "gate.passed": str(decision.passed).lower(),
        "gate.reasons": " | ".join(decision.reasons)[:_TAG_VALUE_LIMIT],
    }
    for check in decision.checks:
        status = "pass" if check.passed else "fail"
        tags[_tag_key(f"gate.check.{check.name}")] = (
            f"{status} value={_fmt(check.value)} limit={_fmt(check.limit)}"
        )
    return tags

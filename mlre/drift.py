"""Prefect-free input and prediction drift: sample, test each column with Evidently, decide.

The flow is `sample_parquet` (or in-memory frames) -> `check_drift` -> `DriftResult`:

- Both sides are reduced to a seeded sample of `DriftConfig.sample_size` rows with the same method
  (DuckDB reservoir sampling while reading parquet, or `sample_frame` for in-memory frames), so
  memory and time do not grow with the data and Evidently picks its > 1000-row defaults
  (normed Wasserstein for numeric columns, Jensen-Shannon for categorical ones).
- `column_drift` runs one Evidently `ValueDrift` per column and reads the results by metric type
  and column. It adds two checks Evidently does not make: a missing-value surge (Evidently drops
  NaNs before its test, so a column that turns 40% empty looks undrifted to it) and never-seen
  categories.
- `decide` is pure: it turns the per-column verdicts into one `DriftDecision` with its reasons.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlre.errors import MlreError

ColumnKind = Literal["numerical", "categorical"]

SCORE_COLUMN = "score"
_VALUE_DRIFT_TYPE = "evidently:metric_v2:ValueDrift"

# Evidently reports the method by display name. Distances drift when score >= threshold;
# p-value tests drift when p < threshold. An unknown name is an error, never a guess.
_DISTANCE_METHODS = frozenset(
    {
        "Wasserstein distance (normed)",
        "Jensen-Shannon distance",
        "Hellinger distance",
        "Kullback-Leibler divergence",
        "PSI",
        "Energy-distance",
    }
)
_P_VALUE_METHODS = frozenset(
    {
        "K-S p_value",
        "chi-square p_value",
        "Z-test p_value",
        "Mann-Whitney U-rank test",
        "t_test",
        "Epps-Singleton",
        "Anderson-Darling",
        "Cramer-von Mises",
        "Fisher's Exact test",
        "g_test",
        "empirical_mmd",
        "Total-Variation-Distance",
    }
)
# Used when a column cannot be tested because one side has no values at all.
_NO_TEST = "not tested (no values)"


class DriftError(MlreError):
    """Drift cannot be checked on these inputs (empty data, missing columns, changed types)."""


class DriftConfig(BaseModel):
    """How drift is sampled, tested and decided; the one place these defaults live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # 20k per side: on bench/drift.py (1M rows, 5 scenarios) it agreed with Evidently on the full
    # data on every non-borderline column, as 50k did, at ~0.6x the time and memory; see
    # bench/results/drift.json.
    sample_size: int = Field(20_000, ge=1_001, description="Rows sampled per side.")
    seed: int = Field(0, ge=0, description="Seed of the row sample.")
    drift_share: float = Field(
        0.5, gt=0.0, le=1.0, description="Dataset drifted when this share of columns drifted."
    )
    borderline_margin: float = Field(
        0.02, ge=0.0, description="Scores within threshold +/- margin are borderline."
    )
    max_missing_share_increase: float = Field(
        0.10, ge=0.0, le=1.0, description="Missing share may grow this much before an alert."
    )
    new_category_min_share: float = Field(
        0.01, ge=0.0, le=1.0, description="Share of current rows a never-seen category needs."
    )
    numeric_threshold: float | None = Field(None, description="Override Evidently's default.")
    categorical_threshold: float | None = Field(None, description="Override Evidently's default.")


class ColumnDrift(BaseModel):
    """One column's verdict: Evidently's test plus our missing-value and new-category checks."""

    model_config = ConfigDict(frozen=True)

    column: str
    kind: ColumnKind
    method: str
    score: float
    threshold: float
    drifted: bool  # Evidently's statistical verdict only
    borderline: bool
    missing_share_reference: float
    missing_share_current: float
    missing_surge: bool
    new_categories: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        """Whether anything about this column needs attention."""
        return self.drifted or self.missing_surge or bool(self.new_categories)


class DriftDecision(BaseModel):
    """Dataset verdict with the reasons a reader (or an MLflow tag) needs."""

    model_config = ConfigDict(frozen=True)

    drifted: bool
    drifted_share: float
    drifted_columns: tuple[str, ...]
    borderline_columns: tuple[str, ...]
    missing_surges: tuple[str, ...]
    new_categories: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    reasons: list[str]


@dataclass(frozen=True)
class DriftResult:
    """Decision, per-column verdicts and the Evidently snapshot (for `save_html`)."""

    decision: DriftDecision
    columns: list[ColumnDrift]
    report: Any


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _parquet_files(paths_or_uri: str | Path | Iterable[str | Path]) -> list[str]:
    """Expand a folder, a glob/URI string or a list of files into the file list DuckDB reads."""
    if isinstance(paths_or_uri, str | Path):
        path = Path(paths_or_uri)
        if path.is_dir():
            files = sorted(str(p) for p in path.rglob("*.parquet") if not p.name.startswith("."))
            if not files:
                raise DriftError(f"No parquet files under {path}; write the data first.")
            return files
        return [str(paths_or_uri)]
    files = [str(p) for p in paths_or_uri]
    if not files:
        raise DriftError("sample_parquet got an empty file list; pass at least one parquet file.")
    return files


def sample_parquet(
    paths_or_uri: str | Path | Iterable[str | Path],
    columns: Sequence[str],
    n: int,
    seed: int,
) -> pd.DataFrame:
    """Seeded reservoir sample of n rows (all rows if fewer), taken by DuckDB while reading.

    Method: `SELECT cols FROM read_parquet([...]) USING SAMPLE reservoir(n ROWS) REPEATABLE (seed)`
    on a single-threaded connection, so the same files and seed give the same rows and memory holds
    about n rows of the selected columns, never the whole data. Use the same n for reference and
    current (the same method on both sides); give the two sides different seeds.
    """
    import duckdb

    files = _parquet_files(paths_or_uri)
    if not columns:
        raise DriftError("sample_parquet needs at least one column to read.")
    cols = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    # One thread: DuckDB only guarantees a REPEATABLE sample without parallel scans.
    con = duckdb.connect(config={"threads": 1})
    try:
        query = (
            f"SELECT {cols} FROM read_parquet($files) "
            f"USING SAMPLE reservoir({int(n)} ROWS) REPEATABLE ({int(seed)})"
        )
        frame = con.execute(query, {"files": files}).df()
    except duckdb.Error as exc:
        raise DriftError(
            f"Could not sample columns {list(columns)} from {files[:3]}...: {exc}. "
            "Check the paths and that every column exists in every file."
        ) from exc
    finally:
        con.close()
    return frame


def sample_frame(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Seeded uniform sample of n rows of an in-memory frame (the frame itself if not larger)."""
    if len(frame) <= n:
        return frame
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _dtype_kind(series: pd.Series) -> str:
    """Coarse type family: numbers may widen (int -> Int64 -> float) but not become strings."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype):
        return "string"
    if pd.api.types.is_string_dtype(dtype):
        return "string"
    return str(dtype)


def validate_inputs(
    reference: pd.DataFrame, current: pd.DataFrame, schema: Mapping[str, ColumnKind]
) -> None:
    """Raise DriftError for inputs where any verdict would be meaningless."""
    if not schema:
        raise DriftError("The drift schema is empty; name the columns to check.")
    bad_kinds = {c: k for c, k in schema.items() if k not in ("numerical", "categorical")}
    if bad_kinds:
        raise DriftError(f"Schema kinds must be 'numerical' or 'categorical', got {bad_kinds}.")
    for side, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            raise DriftError(
                f"The {side} data is empty; pick a window that has rows before checking drift."
            )
        missing = [c for c in schema if c not in frame.columns]
        if missing:
            raise DriftError(
                f"Columns {missing} are missing from the {side} data; fix the feature pipeline "
                "or remove them from the drift schema."
            )
    changed = {
        c: (_dtype_kind(reference[c]), _dtype_kind(current[c]))
        for c in schema
        if _dtype_kind(reference[c]) != _dtype_kind(current[c])
    }
    if changed:
        detail = ", ".join(f"{c}: {r} -> {k}" for c, (r, k) in changed.items())
        raise DriftError(
            f"Column types changed between reference and current ({detail}); the producer "
            "changed the schema: fix it upstream or retrain on the new schema."
        )
    not_numeric = [
        c for c, k in schema.items() if k == "numerical" and _dtype_kind(reference[c]) != "numeric"
    ]
    if not_numeric:
        raise DriftError(
            f"Columns {not_numeric} are declared numerical but hold "
            f"{[str(reference[c].dtype) for c in not_numeric]}; declare them categorical."
        )
    empty_ref = [c for c in schema if reference[c].isna().all()]
    if empty_ref:
        raise DriftError(
            f"Columns {empty_ref} have no values in the reference data; nothing to compare "
            "against: pick another reference window or drop them from the schema."
        )


# --------------------------------------------------------------------------------------------
# Evidently
# --------------------------------------------------------------------------------------------


def data_definition(schema: Mapping[str, ColumnKind]) -> Any:
    """Explicit Evidently DataDefinition: no type inference from the data."""
    from evidently import DataDefinition

    return DataDefinition(
        numerical_columns=[c for c, k in schema.items() if k == "numerical"],
        categorical_columns=[c for c, k in schema.items() if k == "categorical"],
    )


def _threshold_for(kind: ColumnKind, config: DriftConfig) -> float | None:
    """The configured threshold override for a column kind (None = Evidently's default)."""
    return config.numeric_threshold if kind == "numerical" else config.categorical_threshold


def is_p_value(method: str) -> bool:
    """Whether a lower score means more drift (p-value tests) or a higher one (distances)."""
    if method in _DISTANCE_METHODS:
        return False
    if method in _P_VALUE_METHODS or "p_value" in method:
        return True
    raise DriftError(
        f"Unknown Evidently drift method {method!r}; add it to mlre.drift's method lists."
    )


def verdict(method: str, score: float, threshold: float, margin: float) -> tuple[bool, bool]:
    """(drifted, borderline) for a score, in the direction the method reads."""
    if method == _NO_TEST or math.isnan(score):
        return False, False
    drifted = score < threshold if is_p_value(method) else score >= threshold
    return drifted, abs(score - threshold) <= margin


def _prepare(frame: pd.DataFrame, schema: Mapping[str, ColumnKind]) -> pd.DataFrame:
    """Schema columns only; categories as strings so 1 and '1' never count as two values."""
    out = frame[list(schema)].copy()
    for column, kind in schema.items():
        if kind == "categorical":
            values = out[column]
            out[column] = values.astype(str).astype(object).where(values.notna(), None)
        elif not pd.api.types.is_float_dtype(out[column].dtype):
            # Nullable ints (Int64 with pd.NA) become float with NaN, which Evidently drops.
            out[column] = out[column].astype("float64")
    return out


def _run_value_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: Mapping[str, ColumnKind],
    config: DriftConfig,
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Run one ValueDrift per testable column; results keyed by column, read by metric type."""
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift

    # DriftedColumnsCount would re-run every column's test; the share is computed in `decide`.
    report = Report(
        [ValueDrift(column=c, threshold=_threshold_for(k, config)) for c, k in schema.items()]
    )
    definition = data_definition(schema)
    snapshot = report.run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    by_column: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        cfg = metric["config"]
        if cfg.get("type") == _VALUE_DRIFT_TYPE:
            by_column[cfg["column"]] = {
                "method": cfg["method"],
                "threshold": float(cfg["threshold"]),
                "score": float(metric["value"]),
            }
    lost = [c for c in schema if c not in by_column]
    if lost:
        raise DriftError(f"Evidently returned no ValueDrift result for columns {lost}.")
    return snapshot, by_column


def _new_categories(reference: pd.Series, current: pd.Series, min_share: float) -> tuple[str, ...]:
    """Current values never seen in the reference that cover at least min_share of current rows."""
    shares = current.dropna().value_counts() / max(len(current), 1)
    seen = set(reference.dropna().unique())
    return tuple(sorted(str(v) for v, s in shares.items() if v not in seen and s >= min_share))


def _column_verdicts(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: Mapping[str, ColumnKind],
    config: DriftConfig,
    results: Mapping[str, Mapping[str, Any]],
) -> list[ColumnDrift]:
    """Combine Evidently's per-column results with the missing-value and new-category checks."""
    columns = []
    for column, kind in schema.items():
        result = results.get(column, {"method": _NO_TEST, "threshold": math.nan, "score": math.nan})
        drifted, borderline = verdict(
            result["method"], result["score"], result["threshold"], config.borderline_margin
        )
        miss_ref = float(reference[column].isna().mean())
        miss_cur = float(current[column].isna().mean())
        new = (
            _new_categories(reference[column], current[column], config.new_category_min_share)
            if kind == "categorical"
            else ()
        )
        columns.append(
            ColumnDrift(
                column=column,
                kind=kind,
                method=result["method"],
                score=result["score"],
                threshold=result["threshold"],
                drifted=drifted,
                borderline=borderline,
                missing_share_reference=miss_ref,
                missing_share_current=miss_cur,
                missing_surge=miss_cur - miss_ref > config.max_missing_share_increase,
                new_categories=new,
            )
        )
    return columns


def _column_drift_with_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: Mapping[str, ColumnKind],
    config: DriftConfig,
) -> tuple[list[ColumnDrift], Any]:
    """Validated per-column verdicts and the Evidently snapshot they came from."""
    validate_inputs(reference, current, schema)
    ref, cur = _prepare(reference, schema), _prepare(current, schema)
    # A column with no current values cannot be tested (Evidently raises); the missing-value
    # check still reports it as a 100% surge.
    testable = {c: k for c, k in schema.items() if cur[c].notna().any()}
    snapshot, results = _run_value_drift(ref, cur, testable, config) if testable else (None, {})
    return _column_verdicts(ref, cur, schema, config, results), snapshot


def column_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: Mapping[str, ColumnKind],
    config: DriftConfig | None = None,
) -> list[ColumnDrift]:
    """Per-column drift verdicts on the frames as given (no sampling)."""
    return _column_drift_with_report(reference, current, schema, config or DriftConfig())[0]


# --------------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------------


def decide(columns: Sequence[ColumnDrift], config: DriftConfig | None = None) -> DriftDecision:
    """Dataset verdict from per-column verdicts; pure.

    The dataset drifted when the share of flagged columns reaches `drift_share`. A missing-value
    surge or a never-seen category in ANY column also sets `drifted`: both are data-quality alerts
    the model cannot absorb (Evidently ignores NaNs; a new category has no learned encoding), so
    they must never read as "no drift". Each gets its own reason.
    """
    config = config or DriftConfig()
    if not columns:
        raise DriftError("decide got no column verdicts; check at least one column.")
    flagged = tuple(c.column for c in columns if c.flagged)
    share = len(flagged) / len(columns)
    surges = tuple(c.column for c in columns if c.missing_surge)
    new = {c.column: c.new_categories for c in columns if c.new_categories}
    borderline = tuple(c.column for c in columns if c.borderline)
    reasons = []
    by_share = share >= config.drift_share
    reasons.append(
        f"{len(flagged)} of {len(columns)} columns drifted ({share:.0%}); dataset threshold "
        f"{config.drift_share:.0%}: {'reached' if by_share else 'not reached'}."
    )
    reasons.extend(
        f"Column {c.column!r} drifted: {c.method} = {c.score:.4f} (threshold {c.threshold:g})."
        for c in columns
        if c.drifted
    )
    reasons.extend(
        f"Missing-value surge in {c.column!r}: {c.missing_share_reference:.1%} -> "
        f"{c.missing_share_current:.1%} (allowed +{config.max_missing_share_increase:.0%}); "
        "data-quality alert, treated as drift."
        for c in columns
        if c.missing_surge
    )
    reasons.extend(
        f"Never-seen categories in {column!r}: {list(values)}; treated as drift."
        for column, values in new.items()
    )
    if borderline:
        reasons.append(
            f"Borderline columns (score within threshold +/- {config.borderline_margin}): "
            f"{list(borderline)}; their verdict may flip with another sample."
        )
    return DriftDecision(
        drifted=by_share or bool(surges) or bool(new),
        drifted_share=share,
        drifted_columns=flagged,
        borderline_columns=borderline,
        missing_surges=surges,
        new_categories=new,
        reasons=reasons,
    )


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: Mapping[str, ColumnKind],
    config: DriftConfig | None = None,
) -> DriftResult:
    """Sample both sides to `sample_size` rows (seeded), test every column, decide."""
    config = config or DriftConfig()
    validate_inputs(reference, current, schema)
    # Different seeds per side so the two samples are independent draws.
    ref = sample_frame(reference, config.sample_size, config.seed)
    cur = sample_frame(current, config.sample_size, config.seed + 1)
    columns, snapshot = _column_drift_with_report(ref, cur, schema, config)
    return DriftResult(decision=decide(columns, config), columns=columns, report=snapshot)


def prediction_drift(
    ref_scores: Sequence[float] | np.ndarray | pd.Series,
    cur_scores: Sequence[float] | np.ndarray | pd.Series,
    config: DriftConfig | None = None,
) -> ColumnDrift:
    """Drift of model scores, with the same sampling and tests as a numerical column."""
    config = config or DriftConfig()
    reference = pd.DataFrame({SCORE_COLUMN: np.asarray(ref_scores, dtype="float64")})
    current = pd.DataFrame({SCORE_COLUMN: np.asarray(cur_scores, dtype="float64")})
    result = check_drift(reference, current, {SCORE_COLUMN: "numerical"}, config)
    return result.columns[0]


def save_html(report: Any, path: str | Path) -> Path:
    """Write the Evidently snapshot as a self-contained HTML file; returns the path."""
    if report is None:
        raise DriftError("No Evidently report to save (no column had current values to test).")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    report.save_html(str(target))
    return target

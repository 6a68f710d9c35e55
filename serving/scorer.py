"""Scoring a fitted scikit-learn Pipeline on a few rows without sklearn's per-call overhead.

At one to a few rows per call, `Pipeline.predict_proba(DataFrame)` spends most of its time on
things that do not depend on the rows: a DataFrame per request, input validation in every step,
the ColumnTransformer's column bookkeeping, and, for a random forest, a joblib dispatch over its
trees. `compile_scorer` turns the fitted preprocessing steps the platform trains (ColumnTransformer,
SimpleImputer, StandardScaler, OneHotEncoder, nested Pipelines, passthrough) into the same
numpy operations on arrays, and calls the final estimator on the resulting matrix with sklearn's
validation switched off (a random forest sums its trees directly, in sklearn's own order).

The result must equal the pipeline's own scores: `verified_scorer` checks that at load time on
probe rows built from the fitted statistics (missing values, unknown categories included) and
falls back to the pipeline when a step is not supported or any score differs by more than 1e-9.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

log = logging.getLogger(__name__)

# The largest difference from the pipeline's own scores a compiled scorer may show.
TOLERANCE = 1e-9

Table = Mapping[str, np.ndarray]  # column name -> one value per row
Step = Callable[[np.ndarray], np.ndarray]  # a fitted transformer on a 2-D array


class Unsupported(Exception):
    """A step the compiler does not translate; the pipeline itself scores instead."""


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def _missing(x: np.ndarray) -> np.ndarray:
    """What SimpleImputer(missing_values=nan) counts as missing: NaN (None is a value to it)."""
    if x.dtype.kind == "f":
        return np.isnan(x)
    if x.dtype.kind == "O":
        return x != x  # noqa: PLR0124 -- NaN is the one value unequal to itself
    return np.zeros(x.shape, dtype=bool)


def _imputer(step: SimpleImputer) -> Step:
    missing_values = step.missing_values
    if not (isinstance(missing_values, float) and np.isnan(missing_values)) or step.add_indicator:
        raise Unsupported(f"SimpleImputer(missing_values={missing_values!r}, add_indicator)")
    statistics = np.asarray(step.statistics_)
    # sklearn drops columns it could not fit a statistic for (all missing in training).
    keep = (
        ~_missing(statistics)
        if step.strategy != "constant" and not step.keep_empty_features
        else np.ones(len(statistics), dtype=bool)
    )

    def impute(x: np.ndarray) -> np.ndarray:
        x = x[:, keep] if not keep.all() else x.copy()
        mask = _missing(x)
        if mask.any():
            x[mask] = np.broadcast_to(statistics[keep], x.shape)[mask]
        return x

    return impute


def _scaler(step: StandardScaler) -> Step:
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None

    def standardize(x: np.ndarray) -> np.ndarray:
        x = np.array(x, dtype=np.float64)  # a copy, as sklearn's transform makes
        if mean is not None:
            x -= mean
        if scale is not None:
            x /= scale
        return x

    return standardize


def _one_hot(step: OneHotEncoder) -> Step:
    unsupported = (
        step.drop is not None,
        step.handle_unknown not in ("ignore", "infrequent_if_exist"),
        getattr(step, "_infrequent_enabled", False),
        step.sparse_output,
    )
    if any(unsupported):
        raise Unsupported("OneHotEncoder with drop, infrequent categories or sparse output")
    lookups = [{value: k for k, value in enumerate(cats)} for cats in step.categories_]
    widths = [len(cats) for cats in step.categories_]
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
    dtype = step.dtype

    def encode(x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], sum(widths)), dtype=dtype)
        for j, (lookup, offset) in enumerate(zip(lookups, offsets, strict=True)):
            for i, value in enumerate(x[:, j]):
                k = lookup.get(value)
                if k is not None:  # unknown categories encode as all zeros
                    out[i, offset + k] = 1
        return out

    return encode


def _chain(steps: Sequence[Step]) -> Step:
    def run(x: np.ndarray) -> np.ndarray:
        for step in steps:
            x = step(x)
        return x

    return run


def _step(step: Any) -> Step:
    """One fitted transformer (or a Pipeline of them) as a function on arrays."""
    if _is_identity(step):
        return lambda x: x
    if isinstance(step, Pipeline):
        return _chain([_step(s) for _, s in step.steps])
    for kind, compile_kind in _STEPS:
        if type(step) is kind:  # exact types: a subclass may transform differently
            return compile_kind(step)
    raise Unsupported(f"step {type(step).__name__}")


def _is_identity(step: Any) -> bool:
    """'passthrough', or the identity FunctionTransformer a ColumnTransformer fits for it."""
    if isinstance(step, str) and step == "passthrough":
        return True
    return step is None or (
        type(step) is FunctionTransformer and step.func is None and not step.validate
    )


_STEPS: tuple[tuple[type, Callable[[Any], Step]], ...] = (
    (SimpleImputer, _imputer),
    (StandardScaler, _scaler),
    (OneHotEncoder, _one_hot),
)


def _block(table: Table, columns: Sequence[str]) -> np.ndarray:
    """Columns as one 2-D array: float64 when every column is float (as a DataFrame of float
    columns converts), else object."""
    arrays = [table[name] for name in columns]
    if all(a.dtype.kind == "f" for a in arrays):
        return np.column_stack(arrays).astype(np.float64, copy=False)
    return np.column_stack([a.astype(object) for a in arrays])


def _column_transformer(ct: ColumnTransformer, inputs: Sequence[str]) -> Callable[[Table], Any]:
    if getattr(ct, "sparse_output_", False):
        raise Unsupported("ColumnTransformer with sparse output")
    parts: list[tuple[list[str], Step]] = []
    for _, transformer, columns in ct.transformers_:
        if (isinstance(transformer, str) and transformer == "drop") or len(columns) == 0:
            continue
        names = [inputs[c] if isinstance(c, int | np.integer) else str(c) for c in columns]
        parts.append((names, _step(transformer)))

    def transform(table: Table) -> np.ndarray:
        return np.hstack([step(_block(table, names)) for names, step in parts])

    return transform


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


def _positive_proba(estimator: Any) -> Step:
    """P(positive class) (or the prediction of a regressor) on a prepared matrix."""
    if type(estimator) is RandomForestClassifier and estimator.n_outputs_ == 1:
        return _forest_proba(estimator)
    if type(estimator) is LogisticRegression and len(estimator.classes_) == 2:
        return _logistic_proba(estimator)
    if hasattr(estimator, "predict_proba"):
        return lambda x: estimator.predict_proba(x)[:, 1]
    return estimator.predict


def _logistic_proba(model: LogisticRegression) -> Step:
    """Binary LogisticRegression.predict_proba's positive column, as sklearn computes it
    (expit of X @ coef.T + intercept), without its validation of X."""
    coef_t, intercept = model.coef_.T, model.intercept_

    def proba(x: np.ndarray) -> np.ndarray:
        return expit((x @ coef_t + intercept).reshape(-1))

    return proba


def _forest_proba(forest: RandomForestClassifier) -> Step:
    """sklearn's RandomForestClassifier.predict_proba without joblib: the trees' probabilities
    summed in the same order, then divided by their count (bit for bit what n_jobs=1 gives)."""
    trees = list(forest.estimators_)

    def proba(x: np.ndarray) -> np.ndarray:
        x32 = np.asarray(x, dtype=np.float32)
        total = np.zeros((x.shape[0], forest.n_classes_), dtype=np.float64)
        for tree in trees:
            total += tree.predict_proba(x32, check_input=False)
        total /= len(trees)
        return total[:, 1]

    return proba


# --------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scorer:
    """Scores rows given as columns; `compiled` says whether the fast path is in use."""

    score: Callable[[Table], np.ndarray]
    compiled: bool
    reason: str = ""  # why the pipeline itself scores (compiled=False)


def pipeline_scorer(model: Any, inputs: Sequence[str], reason: str = "") -> Scorer:
    """The model's own predict_proba on a DataFrame: always right, the fallback."""
    columns = list(inputs)

    def score(table: Table) -> np.ndarray:
        frame = pd.DataFrame({name: table[name] for name in columns})
        if hasattr(model, "predict_proba"):
            return np.asarray(model.predict_proba(frame)[:, 1], dtype=np.float64)
        return np.asarray(model.predict(frame), dtype=np.float64)

    return Scorer(score, compiled=False, reason=reason)


def compile_scorer(model: Any, inputs: Sequence[str]) -> Scorer:
    """The pipeline as array operations; raises Unsupported for what it cannot translate."""
    steps = model.steps if isinstance(model, Pipeline) else [("model", model)]
    *prep, (_, estimator) = steps
    names = list(inputs)
    if prep and isinstance(prep[0][1], ColumnTransformer):
        first: Callable[[Table], np.ndarray] = _column_transformer(prep[0][1], names)
        prep = prep[1:]
    else:
        first = lambda table: _block(table, names)  # noqa: E731
    rest = _chain([_step(step) for _, step in prep])
    predict = _positive_proba(estimator)

    def score(table: Table) -> np.ndarray:
        x = rest(first(table))
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return np.asarray(predict(x), dtype=np.float64)

    return Scorer(score, compiled=True)


def verified_scorer(model: Any, inputs: Sequence[str], probe: Table) -> Scorer:
    """The compiled scorer if it gives the pipeline's scores on `probe` (within TOLERANCE),
    else the pipeline itself, with the reason."""
    reference = pipeline_scorer(model, inputs)
    try:
        compiled = compile_scorer(model, inputs)
        got, expected = compiled.score(probe), reference.score(probe)
    except Unsupported as exc:
        return pipeline_scorer(model, inputs, f"not compiled: {exc}")
    except Exception as exc:  # a step the compiler misread: the pipeline stays in charge
        log.warning("Compiled scorer failed on the probe rows: %s", exc)
        return pipeline_scorer(model, inputs, f"compiled scorer failed: {exc}")
    worst = float(np.max(np.abs(got - expected), initial=0.0))
    if got.shape != expected.shape or not worst <= TOLERANCE:
        return pipeline_scorer(
            model, inputs, f"compiled scores differ from the pipeline's by {worst:.3g}"
        )
    return compiled


def probe_rows(model: Any, inputs: Sequence[str], n: int = 64, seed: int = 0) -> dict[str, Any]:
    """Rows that exercise every branch: numbers around the fitted statistics, missing values,
    every known category, an unknown one and missing text. Columns the model saw as text get
    text; the others floats (as the service feeds them)."""
    rng = np.random.default_rng(seed)
    categories = _fitted_categories(model)
    table: dict[str, Any] = {}
    for name in inputs:
        if name in categories:
            known = list(categories[name])
            values = [known[i % len(known)] for i in range(n)] if known else ["?"] * n
            values[-1], values[-2] = "<never seen in training>", None
            table[name] = np.array(values, dtype=object)
        else:
            column = rng.normal(0.0, 3.0, n) * rng.choice([1.0, 10.0, 1000.0], n)
            column[::7] = np.nan
            table[name] = column
    return table


def _fitted_categories(model: Any) -> dict[str, Sequence[Any]]:
    """Input column -> categories of the OneHotEncoder reading it (in a ColumnTransformer)."""
    found: dict[str, Sequence[Any]] = {}
    steps = model.steps if isinstance(model, Pipeline) else []
    for _, step in steps:
        if not isinstance(step, ColumnTransformer):
            continue
        for _, transformer, columns in step.transformers_:
            encoders = (
                [s for _, s in transformer.steps if isinstance(s, OneHotEncoder)]
                if isinstance(transformer, Pipeline)
                else [transformer]
                if isinstance(transformer, OneHotEncoder)
                else []
            )
            for encoder in encoders:
                for column, cats in zip(columns, encoder.categories_, strict=False):
                    found[str(column)] = list(cats)
    return found

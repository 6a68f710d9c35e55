"""The compiled scorer gives the MLflow model's own scores, for every family the platform trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from mlre.model_files import load_sklearn_model
from mlre.training import MODEL_FAMILIES, build_pipeline, skops_trusted_types
from serving import scorer as scorer_module
from serving.scorer import TOLERANCE, Scorer, pipeline_scorer, probe_rows, verified_scorer
from serving.service import model_table

NUMERIC = [f"x{i}" for i in range(6)]
CATEGORICAL = ["channel"]
INPUTS = (*NUMERIC, *CATEGORICAL)


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.normal(0, 1 + i, n) for i, name in enumerate(NUMERIC)})
    frame.loc[::11, "x2"] = np.nan  # served values may be missing
    frame["channel"] = rng.choice(["web", "pos", "app"], n).astype(object)
    frame.loc[::13, "channel"] = np.nan
    return frame


def _label(frame: pd.DataFrame, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 1, len(frame))
    return ((frame["x0"] + (frame["channel"] == "web") + noise) > 0.7).astype(int).to_numpy()


def _served_rows(n: int = 40) -> dict[str, np.ndarray]:
    """Rows as the service builds them (serving.service.model_table): floats with NaN, text with
    None, a category training never saw."""
    frame = _frame(n, seed=99)
    columns = {name: frame[name].tolist() for name in NUMERIC}
    channel = frame["channel"].where(frame["channel"].notna(), None).tolist()
    channel[3] = "atm"  # unknown at training time
    columns["channel"] = channel
    return model_table(columns, INPUTS, n)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One MLflow sklearn model per family, saved as the train-model flow logs them (skops)."""
    import mlflow

    train = _frame(600, seed=1)
    out: dict[str, Path] = {}
    for family in MODEL_FAMILIES:
        pipeline = build_pipeline(family, NUMERIC, CATEGORICAL, seed=0, threads=1)
        pipeline.fit(train, _label(train, seed=2))
        path = tmp_path_factory.mktemp(family) / "model"
        mlflow.sklearn.save_model(
            pipeline,
            str(path),
            serialization_format="skops",
            skops_trusted_types=skops_trusted_types(pipeline),
        )
        out[family] = path
    return out


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_compiled_scores_equal_the_mlflow_models_for_every_family(
    family: str, saved_models: dict[str, Path]
) -> None:
    import mlflow

    path = saved_models[family]
    served = load_sklearn_model(path, family)  # what the service loads
    pyfunc_model = mlflow.pyfunc.load_model(str(path)).get_raw_model()
    rows = _served_rows()

    scorer = verified_scorer(served, INPUTS, probe_rows(served, INPUTS))
    expected = pyfunc_model.predict_proba(pd.DataFrame(rows))[:, 1]

    assert scorer.compiled, scorer.reason
    np.testing.assert_allclose(scorer.score(rows), expected, rtol=0, atol=TOLERANCE)
    # One row at a time (the common online call) gives the same scores as the batch.
    singles = [scorer.score({k: v[i : i + 1] for k, v in rows.items()})[0] for i in range(5)]
    np.testing.assert_allclose(singles, expected[:5], rtol=0, atol=TOLERANCE)


def test_a_step_it_cannot_compile_leaves_the_pipeline_scoring() -> None:
    train = _frame(300, seed=3)[NUMERIC].fillna(0.0)
    pipeline = Pipeline(
        [("poly", PolynomialFeatures(2)), ("scale", StandardScaler()), ("lr", LogisticRegression())]
    ).fit(train, _label(_frame(300, seed=3), seed=4))
    rows = {name: train[name].to_numpy() for name in NUMERIC}

    scorer = verified_scorer(pipeline, NUMERIC, probe_rows(pipeline, NUMERIC))

    assert not scorer.compiled
    assert "PolynomialFeatures" in scorer.reason
    np.testing.assert_array_equal(scorer.score(rows), pipeline.predict_proba(train)[:, 1])


def test_a_compiled_scorer_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    train = _frame(300, seed=5)
    pipeline = build_pipeline("logistic_regression", NUMERIC, CATEGORICAL).fit(
        train, _label(train, seed=6)
    )
    honest = scorer_module.compile_scorer(pipeline, INPUTS)
    off = Scorer(lambda table: honest.score(table) + 1e-6, compiled=True)
    monkeypatch.setattr(scorer_module, "compile_scorer", lambda model, inputs: off)

    scorer = verified_scorer(pipeline, INPUTS, probe_rows(pipeline, INPUTS))

    assert not scorer.compiled
    assert "differ" in scorer.reason
    rows = _served_rows()
    np.testing.assert_array_equal(scorer.score(rows), pipeline_scorer(pipeline, INPUTS).score(rows))

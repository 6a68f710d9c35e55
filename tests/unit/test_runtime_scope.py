"""Work inside a process leaves its environment alone: feature definitions get the lake from the
settings they are loaded with, tasks read settings, models load without MLflow's unpickler."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FileSource
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlre.errors import InferenceError
from mlre.features.store import load_repo_contents, repo_lake_uri
from mlre.model_files import load_sklearn_model
from mlre.settings import PROJECT_ROOT, Settings, get_settings

pytestmark = pytest.mark.unit
FEATURE_REPO = PROJECT_ROOT / "feature_repo"


def test_lake_uri_is_the_offline_uri_else_the_local_lake(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).lake_uri == str(tmp_path / "lake")
    assert Settings(home=tmp_path, offline_uri="s3://lake/x").lake_uri == "s3://lake/x"


@pytest.mark.parametrize("offline_uri", ["", "s3://feature-lake/prod"])
def test_definitions_take_the_lake_of_the_settings_they_are_loaded_with(
    tmp_path: Path, offline_uri: str
) -> None:
    settings = Settings(home=tmp_path, offline_uri=offline_uri)
    before = dict(os.environ)
    contents = load_repo_contents(FEATURE_REPO, settings)
    assert dict(os.environ) == before
    paths = {s.name: s.path for s in contents.data_sources if isinstance(s, FileSource)}
    assert paths["customer_daily_stats_source"] == (
        f"{settings.lake_uri}/sources/customer_daily_stats"
    )
    # Outside a load (a bare `feast` command importing the file) the process's settings decide.
    assert repo_lake_uri() == get_settings().lake_uri


def test_no_process_is_told_to_unpickle_models(tmp_path: Path) -> None:
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" not in Settings(home=tmp_path).client_env()


def test_server_task_keeps_its_retries_and_retries_only_transient_failures() -> None:
    from prefect.cache_policies import NO_CACHE

    from flows._common import server_task, transient_only

    @server_task("probe-server", retries=3, retry_delay_seconds=[2, 5, 15], timeout_seconds=9)
    def probe() -> None:
        """A step that would call a server."""

    assert (probe.name, probe.retries, probe.retry_delay_seconds) == ("probe-server", 3, [2, 5, 15])
    assert probe.retry_condition_fn is transient_only
    assert probe.cache_policy is NO_CACHE
    assert probe.timeout_seconds == 9


def test_flow_parameter_models_share_one_declaration_of_model_and_store() -> None:
    from flows._common import ModelParams, StoreParams
    from flows.drift import CheckDriftParams
    from flows.evaluation import EvaluateParams
    from flows.inference import BatchInferenceParams
    from flows.materialize import MaterializeParams
    from flows.training import TrainParams

    shared = {"model_name", "repo_path", "store_profile", "label_source"}
    for params in (CheckDriftParams, EvaluateParams, BatchInferenceParams, TrainParams):
        assert issubclass(params, ModelParams)
    for params in (CheckDriftParams, EvaluateParams, MaterializeParams, TrainParams):
        assert issubclass(params, StoreParams)
        assert not shared & set(vars(params).get("__annotations__", {}))  # none re-declared
    assert list(TrainParams.model_fields)[:4] == [
        "repo_path",
        "store_profile",
        "model_name",
        "label_source",
    ]


def _save(model: object, path: Path, **options: object) -> Path:
    import mlflow

    mlflow.sklearn.save_model(model, str(path), pip_requirements=["scikit-learn"], **options)
    return path


def _fitted(model: object) -> object:
    x = np.random.default_rng(0).normal(size=(40, 3))
    return model.fit(x, (x[:, 0] > 0).astype(int))


def test_skops_model_loads_with_mlflows_unpickler_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = _fitted(Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())]))
    path = _save(pipeline, tmp_path / "model")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    loaded = load_sklearn_model(path, "Model 'm' version 1")
    x = np.ones((2, 3))
    assert np.allclose(loaded.predict_proba(x), pipeline.predict_proba(x))


def test_xgboost_pipeline_saves_with_reviewed_types_and_scores_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlre.training import build_pipeline, skops_trusted_types

    pipeline = build_pipeline("xgboost", ["a", "b", "c"], [], seed=0)
    frame = pd.DataFrame(np.random.default_rng(1).normal(size=(200, 3)), columns=["a", "b", "c"])
    pipeline.fit(frame, (frame["a"] > 0).astype(int))
    trusted = skops_trusted_types(pipeline)  # refuses types outside our allow-list
    assert {"xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"} <= set(trusted)
    path = _save(pipeline, tmp_path / "model", skops_trusted_types=trusted)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    loaded = load_sklearn_model(path, "Model 'm' version 4")
    np.testing.assert_array_equal(loaded.predict_proba(frame), pipeline.predict_proba(frame))


def test_pickled_model_is_refused_with_the_version_named(tmp_path: Path) -> None:
    path = _save(_fitted(LogisticRegression()), tmp_path / "model", serialization_format="pickle")
    with pytest.raises(InferenceError, match=r"Model 'm' version 3 is saved as 'pickle'"):
        load_sklearn_model(path, "Model 'm' version 3")


def test_model_trusting_types_we_never_reviewed_is_refused(tmp_path: Path) -> None:
    """The model's own MLmodel trusts KDTree; our allow-list does not, so it is not loaded."""
    knn = _fitted(KNeighborsClassifier(n_neighbors=3, algorithm="kd_tree"))
    trusted = [
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.neighbors._kd_tree.KDTree",
    ]
    path = _save(knn, tmp_path / "model", skops_trusted_types=trusted)
    with pytest.raises(InferenceError, match=r"does not trust.*SKOPS_TRUSTED_TYPES"):
        load_sklearn_model(path, "Model 'm' version 4")

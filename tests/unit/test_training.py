"""Time split, pipelines, training and fingerprints on tiny in-memory frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from mlre import training
from mlre.settings import get_settings
from mlre.training import (
    GPU_FAMILIES,
    MODEL_FAMILIES,
    PREDICTION_COLUMN,
    TrainingConfig,
    TrainingError,
    best_trial,
    build_pipeline,
    cuda_available,
    fingerprint,
    reference_frame,
    reference_schema,
    resolve_device,
    split_by_time,
    train,
)

pytestmark = pytest.mark.unit
START = pd.Timestamp("2026-01-01", tz="UTC")


def _frame(days: int = 12, per_day: int = 40, seed: int = 0) -> pd.DataFrame:
    """Labelled rows over `days` days; the label depends on x, so a model can learn it."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    x = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(1000, 1100, n),
            "event_timestamp": START
            + pd.to_timedelta(np.repeat(np.arange(days), per_day), unit="D")
            + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
            "is_fraud": (x + rng.normal(scale=0.7, size=n) > 1.0).astype(int),
            "amount": rng.lognormal(3, 1, n),
            "merchant_category": rng.choice(["grocery", "travel"], n),
            "x": x,
            "noise": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "preferred_channel": rng.choice(["pos", "online", None], n),
        }
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_split_windows_are_disjoint_ordered_and_sized() -> None:
    frame = _frame()
    split = split_by_time(frame, TrainingConfig(validation_days=3, test_days=2))
    days = {name: set(part["event_timestamp"].dt.day) for name, part in split.windows().items()}
    assert days == {"train": set(range(1, 8)), "validation": {8, 9, 10}, "test": {11, 12}}
    assert split.train["event_timestamp"].max() < split.validation["event_timestamp"].min()
    assert split.validation["event_timestamp"].max() < split.test["event_timestamp"].min()
    assert sum(len(part) for part in split.windows().values()) == len(frame)
    assert split.features == ["x", "noise", "preferred_channel"]
    assert split.categorical == ["preferred_channel"]
    assert split.numeric == ["x", "noise"]


@pytest.mark.parametrize(
    ("validation_days", "test_days", "gap_days", "match"),
    [
        (6, 6, (), "train window is empty"),
        (3, 2, (8, 9, 10), "validation window is empty"),  # no labels on those days
    ],
)
def test_split_refuses_empty_windows(validation_days, test_days, gap_days, match) -> None:
    frame = _frame()
    frame = frame[~frame["event_timestamp"].dt.day.isin(gap_days)]
    config = TrainingConfig(validation_days=validation_days, test_days=test_days)
    with pytest.raises(TrainingError, match=match):
        split_by_time(frame, config)


def test_split_refuses_a_single_class_window() -> None:
    frame = _frame()
    frame.loc[frame["event_timestamp"] >= START + pd.Timedelta(days=9), "is_fraud"] = 0
    with pytest.raises(TrainingError, match=r"test window has a single class in 'is_fraud'"):
        split_by_time(frame, TrainingConfig(validation_days=3, test_days=3))


@pytest.mark.parametrize(("drop", "match"), [("is_fraud", "'is_fraud'"), ("event_timestamp", "")])
def test_split_names_a_missing_column(drop: str, match: str) -> None:
    with pytest.raises(TrainingError, match=match or drop):
        split_by_time(_frame().drop(columns=[drop]))


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_each_family_fits_tiny_data_and_ignores_unknown_categories(family: str) -> None:
    frame = _frame(days=4)
    pipeline = build_pipeline(family, ["x", "noise"], ["preferred_channel"], seed=0)
    with threadpool_limits(limits=1):  # OpenMP spin-waits badly on shared CPUs
        pipeline.fit(frame[["x", "noise", "preferred_channel"]], frame["is_fraud"])
    unseen = frame.head(5).assign(preferred_channel="teleport")
    proba = pipeline.predict_proba(unseen[["x", "noise", "preferred_channel"]])
    assert proba.shape == (5, 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    # Unweighted: the validation threshold handles imbalance; weights would skew probabilities.
    params = pipeline.named_steps["model"].get_params()
    assert params.get("class_weight") is None
    assert params.get("scale_pos_weight") is None


@pytest.mark.parametrize(
    ("family", "steps"),
    [
        ("logistic_regression", ["impute", "scale"]),
        ("random_forest", ["impute"]),
        ("hist_gradient_boosting", None),  # NaN-aware: numeric columns pass through
        ("xgboost", None),
    ],
)
def test_numeric_preprocessing_per_family(family: str, steps: list[str] | None) -> None:
    pipeline = build_pipeline(family, ["x"], [], seed=0)
    numeric = pipeline.named_steps["preprocess"].transformers[0][1]
    assert (numeric == "passthrough") if steps is None else [s for s, _ in numeric.steps] == steps


def test_unknown_family_is_a_training_error() -> None:
    with pytest.raises(TrainingError, match="logistic_regression"):
        build_pipeline("catboost", ["x"], [], seed=0)


@pytest.mark.parametrize("search", [False, True])
def test_train_picks_threshold_on_validation(search: bool) -> None:
    config = TrainingConfig(model_family="logistic_regression", search=search, search_iterations=3)
    split = split_by_time(_frame(days=15, per_day=60), config)
    trained = train(split, config)
    assert trained.validation_metrics["roc_auc"] > 0.8
    assert 0.0 < trained.threshold < 1.0
    assert trained.validation_metrics["rows"] == len(split.validation)
    assert trained.features == split.features
    assert ("search_best_validation_pr_auc" in trained.params) is search


def test_xgboost_search_trains_each_trial_on_prepared_data_and_keeps_the_best() -> None:
    config = TrainingConfig(model_family="xgboost", search=True, search_iterations=4, device="cpu")
    split = split_by_time(_frame(days=15, per_day=60), config)
    trained = train(split, config)
    assert len(trained.trials) == 4
    assert len({str(t.params) for t in trained.trials}) == 4  # distinct candidates
    best = best_trial(trained.trials)
    assert trained.params["search_best_validation_pr_auc"] == best.validation_pr_auc
    model = trained.pipeline.named_steps["model"]
    for name, value in best.params.items():  # the refit uses the best candidate's parameters
        assert model.get_params()[name.removeprefix("model__")] == value
    assert trained.validation_metrics["roc_auc"] > 0.8
    assert trained.device == "cpu"


@pytest.mark.parametrize("family", ["logistic_regression", "hist_gradient_boosting"])
def test_trials_scored_one_by_one_are_the_searchs_own_trials(family: str) -> None:
    """What a Dask worker computes per trial (score_candidate) equals RandomizedSearchCV's
    trial: same candidates in the same order, same validation PR AUC; the model is the same."""
    config = TrainingConfig(model_family=family, search=True, search_iterations=4, seed=3)
    split = split_by_time(_frame(days=15, per_day=60), config)
    searched = train(split, config)
    apart = [training.score_candidate(split, config, c) for c in training.search_candidates(config)]
    assert [t.params for t in apart] == [t.params for t in searched.trials]
    for one, other in zip(apart, searched.trials, strict=True):
        assert one.validation_pr_auc == pytest.approx(other.validation_pr_auc, abs=1e-12)
    given = train(split, config, trials=apart)
    assert given.trials == apart
    assert given.params == searched.params | {
        "search_best_validation_pr_auc": best_trial(apart).validation_pr_auc
    }
    assert given.threshold == searched.threshold


def test_device_auto_trains_xgboost_on_the_cpu_without_a_gpu_and_records_it() -> None:
    if cuda_available():
        pytest.skip("this machine has a usable CUDA GPU; auto would pick it")
    config = TrainingConfig(model_family="xgboost", device="auto")
    trained = train(split_by_time(_frame(days=15, per_day=60), config), config)
    assert trained.device == "cpu"
    assert trained.pipeline.named_steps["model"].get_params()["device"] == "cpu"


def test_device_cuda_without_a_gpu_fails_naming_the_node_and_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if cuda_available():
        pytest.skip("this machine has a usable CUDA GPU")
    monkeypatch.setenv("MLRE_NODE_NAME", "ip-10-0-3-7.ec2.internal")
    monkeypatch.setenv("MLRE_WORK_POOL", "k8s-gpu")
    get_settings.cache_clear()
    config = TrainingConfig(model_family="xgboost", device="cuda")
    try:
        with pytest.raises(TrainingError) as error:
            train(split_by_time(_frame(days=15, per_day=60), config), config)
    finally:
        get_settings.cache_clear()
    message = str(error.value)
    assert "'ip-10-0-3-7.ec2.internal'" in message
    assert "'k8s-gpu'" in message
    assert "device='cuda'" in message


def test_a_fit_xgboost_quietly_moved_to_the_cpu_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """XGBoost only warns when device='cuda' finds no GPU; the fit's real device is read back."""
    monkeypatch.setattr(training, "cuda_available", lambda: True)  # a probe that said yes
    config = TrainingConfig(model_family="xgboost", device="cuda")
    with pytest.raises(TrainingError, match=r"asked for cuda but XGBoost ran it on 'cpu'"):
        train(split_by_time(_frame(days=15, per_day=60), config), config)


@pytest.mark.parametrize(
    ("family", "requested", "gpu", "expected"),
    [
        ("xgboost", "auto", True, "cuda"),
        ("xgboost", "auto", False, "cpu"),
        ("xgboost", "cpu", True, "cpu"),
        ("xgboost", "cuda", True, "cuda"),
        ("hist_gradient_boosting", "auto", True, "cpu"),  # cannot use it: never sent there
        ("random_forest", "cpu", False, "cpu"),
    ],
)
def test_resolve_device(family: str, requested: str, gpu: bool, expected: str) -> None:
    assert resolve_device(family, requested, gpu=gpu) == expected
    assert (family in GPU_FAMILIES) is (family == "xgboost")


def test_a_cpu_family_on_cuda_is_refused_naming_the_gpu_families() -> None:
    with pytest.raises(TrainingError, match=r"'random_forest' cannot train on a GPU.*xgboost"):
        resolve_device("random_forest", "cuda", gpu=True)


def test_config_is_frozen_and_search_is_bounded() -> None:
    with pytest.raises(ValueError, match="frozen"):
        TrainingConfig().seed = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="search_iterations"):
        TrainingConfig(search_iterations=500)
    with pytest.raises(ValueError, match="model_family"):
        TrainingConfig(model_family="catboost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        TrainingConfig(device="tpu")  # type: ignore[arg-type]


def test_fingerprint_is_stable_and_sensitive() -> None:
    frame = _frame(days=3)
    digest = fingerprint(frame)
    assert digest == fingerprint(frame.copy()) == fingerprint(_frame(days=3))
    assert len(digest) == 64
    changed = frame.copy()
    changed.loc[7, "amount"] += 0.01
    assert fingerprint(changed) != digest
    assert fingerprint(frame.iloc[::-1].reset_index(drop=True)) != digest
    assert fingerprint(frame.rename(columns={"x": "y"})) != digest
    assert fingerprint(frame.head(len(frame) - 1)) != digest


def test_reference_sample_is_seeded_bounded_and_scored() -> None:
    config = TrainingConfig(model_family="logistic_regression")
    split = split_by_time(_frame(days=15, per_day=60), config)
    trained = train(split, config)
    ref = reference_frame(trained, split.train, seed=1, max_rows=100)
    assert len(ref) == 100
    assert list(ref.columns) == [*split.features, PREDICTION_COLUMN]
    assert ref[PREDICTION_COLUMN].between(0, 1).all()
    pd.testing.assert_frame_equal(ref, reference_frame(trained, split.train, 1, max_rows=100))
    assert len(reference_frame(trained, split.train.head(30), seed=1)) == 30
    assert reference_schema(trained) == {
        "x": "numeric",
        "noise": "numeric",
        "preferred_channel": "categorical",
        PREDICTION_COLUMN: "numeric",
    }

"""Training: a point-in-time training set from Feast, a time split, a pipeline, MLflow logging.

Prefect-free. `build_training_set` asks Feast for the features each label event saw at its own
timestamp and reports (never hides) the label rows Feast could not serve; `split_by_time` cuts
train / validation / test windows with no overlap; `train` fits one model family (XGBoost on a
GPU when one is there) and picks the F1-optimal threshold on validation; `log_training_run`
records the run and its estimated cost, registers the model, and stores the drift reference.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore
from pydantic import BaseModel, ConfigDict, Field
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import ParameterSampler, PredefinedSplit, RandomizedSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from mlre.cost import CostEstimate, estimate_cost
from mlre.errors import FeatureStoreError, MlreError
from mlre.evaluation import choose_threshold, compute_metrics, score
from mlre.features.services import (
    ServiceFeature,
    as_model_frame,
    service_columns,
    service_features,
    unusable_inputs,
)
from mlre.features.sources import kind_of
from mlre.features.store import get_feature_service
from mlre.mlflow_uri import global_tracking_uri, mlflow_answering
from mlre.model_files import SKOPS_TRUSTED_TYPES
from mlre.settings import PROJECT_ROOT, get_settings

ModelFamily = Literal["logistic_regression", "hist_gradient_boosting", "random_forest", "xgboost"]
MODEL_FAMILIES: tuple[str, ...] = ModelFamily.__args__  # type: ignore[attr-defined]
# Families that can train on a CUDA device; only their runs belong on the GPU work pool.
GPU_FAMILIES: tuple[str, ...] = ("xgboost",)
Device = Literal["auto", "cpu", "cuda"]
# The Kubernetes node a flow pod runs on (the work pools' templates set it from the downward API).
NODE_NAME_ENV = "MLRE_NODE_NAME"
ROW_ID = "__mlre_row_id"
PREDICTION_COLUMN = "prediction"
REFERENCE_MAX_ROWS = 5000
TRAINING_CONFIG_TAG = "training_config"


class TrainingError(MlreError):
    """Training inputs are unusable: missing columns, empty or single-class windows, bad service."""


class TrainingConfig(BaseModel):
    """What to train on and how; every default lives here."""

    model_config = ConfigDict(frozen=True)

    feature_service: str = Field("fraud_model_v1", description="Feast feature service to train on.")
    entity_columns: tuple[str, ...] = Field(("customer_id",), description="Entity join keys.")
    timestamp_column: str = Field("event_timestamp", description="When each label event happened.")
    label_column: str = Field("is_fraud", description="Binary 0/1 label.")
    request_columns: tuple[str, ...] = Field(
        ("amount",), description="Request-time values the on-demand features need."
    )
    passthrough_columns: tuple[str, ...] = Field(
        ("merchant_category",), description="Kept for slicing the evaluation, not model inputs."
    )
    model_family: ModelFamily = "hist_gradient_boosting"
    device: Device = Field(
        "auto",
        description="Where a GPU-capable family fits: auto (CUDA when a GPU is visible), cpu, "
        "or cuda (fail when there is none). Other families always fit on the CPU.",
    )
    validation_days: int = Field(3, ge=1, description="Days before the test window.")
    test_days: int = Field(3, ge=1, description="Last days of the data, held out.")
    search: bool = Field(False, description="Run a bounded randomized hyper-parameter search.")
    search_iterations: int = Field(8, ge=1, le=50, description="Candidates the search tries.")
    seed: int = Field(0, ge=0)
    # OpenMP/BLAS threads while fitting. One by default: on shared CPUs (workers, CI) OpenMP's
    # spin-waiting made a 4k-row HGB fit 10x slower (9 s vs 0.9 s); None = library default.
    threads: int | None = Field(1, ge=1, description="Threads for fitting; None = all cores.")

    @property
    def reserved_columns(self) -> tuple[str, ...]:
        """Columns of a training frame that are never model inputs."""
        return (
            *self.entity_columns,
            self.timestamp_column,
            self.label_column,
            *self.request_columns,
            *self.passthrough_columns,
            ROW_ID,
        )


def config_from_tags(tags: dict[str, str]) -> TrainingConfig:
    """The config a model version was trained with (its `training_config` tag); versions
    logged before the tag existed get the defaults with their `feature_service`."""
    if TRAINING_CONFIG_TAG in tags:
        return TrainingConfig.model_validate_json(tags[TRAINING_CONFIG_TAG])
    return TrainingConfig(feature_service=tags.get("feature_service", "fraud_model_v1"))


@dataclass
class TrainingSet:
    """Label events joined with their point-in-time features, and what Feast could not serve."""

    frame: pd.DataFrame
    feature_names: list[str]
    rows_in: int
    rows_dropped: int
    dropped_examples: list[dict[str, Any]] = field(default_factory=list)
    drop_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class Split:
    """Disjoint time windows of a training frame: train < validation < test."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    features: list[str]
    categorical: list[str]

    @property
    def numeric(self) -> list[str]:
        return [name for name in self.features if name not in self.categorical]

    def windows(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


@dataclass
class TrainedModel:
    """A fitted pipeline, its parameters, validation scores and the chosen threshold."""

    pipeline: Pipeline
    family: str
    params: dict[str, Any]
    validation_metrics: dict[str, float]
    threshold: float
    features: list[str]
    categorical: list[str]
    train_seconds: float
    device: str = "cpu"
    trials: list[Trial] = field(default_factory=list)


@dataclass(frozen=True)
class LoggedModel:
    """Where the run and the registered model version ended up."""

    run_id: str
    model_uri: str
    version: str


# --------------------------------------------------------------------------------------------
# The training set
# --------------------------------------------------------------------------------------------


def _service(store: FeatureStore, name: str) -> FeatureService:
    """The feature service, or a TrainingError listing the registered ones."""
    try:
        return get_feature_service(store, name)
    except FeatureStoreError as exc:
        raise TrainingError(str(exc)) from exc


def _service_features(store: FeatureStore, service: FeatureService) -> list[ServiceFeature]:
    """Every feature of the service with its type, checked: each must be a possible model input,
    and the config's entity and request columns must be the ones the service joins on."""
    try:
        return service_features(store, service)
    except FeatureStoreError as exc:
        raise TrainingError(str(exc)) from exc


def _check_service(
    store: FeatureStore,
    service: FeatureService,
    features: list[ServiceFeature],
    config: TrainingConfig,
) -> None:
    """Refuse a service no model can be trained on, or a config that does not fit it."""
    problem = unusable_inputs(features)
    if problem:
        raise TrainingError(f"Feature service {service.name!r}: {problem}")
    keys, request = service_columns(store, service)
    if set(config.entity_columns) != set(keys):
        raise TrainingError(
            f"Feature service {service.name!r} joins on {keys}, but entity_columns is "
            f"{list(config.entity_columns)}; set entity_columns to {keys} (the train-model "
            "flow derives them from the service when left empty)."
        )
    missing = [c for c in request if c not in config.request_columns]
    if missing:
        raise TrainingError(
            f"Feature service {service.name!r} computes on-demand features from request "
            f"value(s) {missing}, which request_columns {list(config.request_columns)} lacks; "
            f"set request_columns to {request}."
        )


def _check_labels(labels: pd.DataFrame, config: TrainingConfig) -> None:
    """Fail early, naming the column, on label frames Feast or sklearn would choke on later."""
    if labels.empty:
        raise TrainingError(
            "The label frame is empty: there are no label events in the requested window; "
            "widen the window or check the transactions source."
        )
    needed = {
        "entity": config.entity_columns,
        "timestamp": (config.timestamp_column,),
        "label": (config.label_column,),
        "request": config.request_columns,
        "passthrough": config.passthrough_columns,
    }
    for role, columns in needed.items():
        missing = [c for c in columns if c not in labels.columns]
        if missing:
            raise TrainingError(
                f"The label frame lacks {role} column(s) {missing} (it has "
                f"{sorted(labels.columns)}); add them or change TrainingConfig."
            )
    _check_two_classes(labels[config.label_column], "label frame", config.label_column)


def _check_two_classes(label: pd.Series, where: str, column: str) -> None:
    values = set(pd.unique(label.dropna()))
    if not values <= {0, 1}:
        raise TrainingError(f"Column {column!r} of the {where} must be 0/1, found {values}.")
    if len(values) < 2:
        raise TrainingError(
            f"The {where} has a single class in {column!r} (only {values or 'no values'}); a "
            "classifier needs both fraud and non-fraud rows: widen the window or use more data."
        )


def _key_kinds(store: FeatureStore, service: FeatureService) -> dict[str, str]:
    """Join key -> kind ("int", "string", ...) of the views the service reads, directly or
    through its on-demand views."""
    names = {p.name for p in service.feature_view_projections}
    for odfv in store.list_on_demand_feature_views():
        if odfv.name in names:
            names |= {p.name for p in odfv.source_feature_view_projections.values()}
    return {
        column.name: kind_of(column.dtype)
        for view in store.list_feature_views()
        if view.name in names
        for column in view.entity_columns
    }


def _entity_frame(
    labels: pd.DataFrame, config: TrainingConfig, key_kinds: dict[str, str] | None = None
) -> pd.DataFrame:
    """Entity keys in the dtype Feast's historical join needs (its join is dtype-strict: int64
    for integer keys, text for string keys), UTC timestamps and a row id."""
    frame = labels.reset_index(drop=True).copy()
    for column in config.entity_columns:
        kind = (key_kinds or {}).get(column, "int")
        dtype = "int64" if kind == "int" else "string" if kind == "string" else None
        if dtype is None:
            continue
        try:
            frame[column] = frame[column].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise TrainingError(
                f"Entity column {column!r} must hold {kind} values (Feast's join key type); it "
                f"has dtype {frame[column].dtype}: {exc}."
            ) from exc
    ts = pd.to_datetime(frame[config.timestamp_column], utc=True)
    if ts.isna().any():
        raise TrainingError(
            f"Timestamp column {config.timestamp_column!r} has {int(ts.isna().sum())} missing "
            "values; drop or fix those label rows."
        )
    frame[config.timestamp_column] = ts
    frame[ROW_ID] = np.arange(len(frame), dtype=np.int64)
    return frame


def build_training_set(
    store: FeatureStore, labels: pd.DataFrame, config: TrainingConfig | None = None
) -> TrainingSet:
    """Point-in-time features for every label event; rows without features are counted, reported."""
    config = config or TrainingConfig()
    _check_labels(labels, config)
    service = _service(store, config.feature_service)
    features = _service_features(store, service)
    _check_service(store, service, features, config)
    feature_names = [f.name for f in features]
    batch_names = [f.name for f in features if f.from_batch_view]
    entities = _entity_frame(labels, config, _key_kinds(store, service))
    request = [*config.entity_columns, config.timestamp_column, *config.request_columns, ROW_ID]
    served = store.get_historical_features(entity_df=entities[request], features=service).to_df()
    missing = [name for name in feature_names if name not in served.columns]
    if missing:
        raise TrainingError(
            f"Feast returned no column for feature(s) {missing} of service "
            f"{config.feature_service!r}; apply the feature repo so the store has them."
        )
    if served[ROW_ID].duplicated().any():
        raise TrainingError("Feast returned duplicate rows for one label event; report this bug.")
    # Feast reorders rows and drops those with no feature value in [T - ttl, T]: join back on
    # our own row id so every surviving label keeps its own features, and count the rest.
    joined = entities.merge(served[[ROW_ID, *feature_names]], on=ROW_ID, how="left")
    not_served = ~entities[ROW_ID].isin(served[ROW_ID]).to_numpy()
    # A key the views never saw comes back with every batch feature null instead: same problem,
    # a label with nothing to learn from, so it is dropped and counted too.
    no_values = ~not_served & joined[batch_names].isna().all(axis=1).to_numpy()
    reasons = np.where(not_served, "not served by Feast (no feature row within the view TTL)",
                       "no feature values (entity key unknown to the feature views)")  # fmt: skip
    dropped = not_served | no_values
    examples = joined.loc[dropped, [*config.entity_columns, config.timestamp_column]].head(5)
    examples = examples.assign(reason=reasons[dropped][: len(examples)])
    keep = [c for c in config.reserved_columns if c != ROW_ID] + feature_names
    frame = joined.loc[~dropped, keep].reset_index(drop=True)
    if frame.empty:
        raise TrainingError(
            f"None of the {len(entities)} label rows got features from service "
            f"{config.feature_service!r} (e.g. {examples.to_dict('records')[:2]}); materialize "
            "or backfill the sources for the label window."
        )
    return TrainingSet(
        frame=as_model_frame(frame, features),
        feature_names=feature_names,
        rows_in=len(entities),
        rows_dropped=int(dropped.sum()),
        dropped_examples=examples.to_dict("records"),
        drop_reasons={"not_served": int(not_served.sum()), "no_values": int(no_values.sum())},
    )


# --------------------------------------------------------------------------------------------
# Time split
# --------------------------------------------------------------------------------------------


def model_features(frame: pd.DataFrame, config: TrainingConfig) -> tuple[list[str], list[str]]:
    """(all model inputs, the categorical ones): every column that is not reserved."""
    features = [c for c in frame.columns if c not in config.reserved_columns]
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    return features, categorical


def split_by_time(frame: pd.DataFrame, config: TrainingConfig | None = None) -> Split:
    """Last `test_days` -> test, the `validation_days` before -> validation, the rest -> train."""
    config = config or TrainingConfig()
    ts_column, label = config.timestamp_column, config.label_column
    for column in (ts_column, label):
        if column not in frame.columns:
            raise TrainingError(
                f"split_by_time: the frame lacks column {column!r}; build it with "
                "build_training_set or fix TrainingConfig."
            )
    if frame.empty:
        raise TrainingError("split_by_time: the training frame is empty; nothing to split.")
    ts = pd.to_datetime(frame[ts_column], utc=True)
    # Whole UTC days counted back from the end of the last day with data.
    end = ts.max().floor("D") + pd.Timedelta(days=1)
    test_start = end - pd.Timedelta(days=config.test_days)
    validation_start = test_start - pd.Timedelta(days=config.validation_days)
    masks = {
        "train": ts < validation_start,
        "validation": (ts >= validation_start) & (ts < test_start),
        "test": ts >= test_start,
    }
    windows = {}
    for name, mask in masks.items():
        part = frame[mask.to_numpy()].sort_values(ts_column, kind="stable")
        if part.empty:
            raise TrainingError(
                f"The {name} window is empty (validation from {validation_start:%Y-%m-%d}, test "
                f"from {test_start:%Y-%m-%d}, data {ts.min():%Y-%m-%d}..{ts.max():%Y-%m-%d}); "
                "use more days of labels or fewer validation_days/test_days."
            )
        _check_two_classes(part[label], f"{name} window", label)
        windows[name] = part.reset_index(drop=True)
    _assert_no_leakage(windows, ts_column)
    features, categorical = model_features(frame, config)
    return Split(**windows, features=features, categorical=categorical)


def _assert_no_leakage(windows: dict[str, pd.DataFrame], ts_column: str) -> None:
    """Every train timestamp precedes every validation one, which precede every test one."""
    names = list(windows)
    for earlier, later in itertools.pairwise(names):
        last = windows[earlier][ts_column].max()
        first = windows[later][ts_column].min()
        if not last < first:
            raise TrainingError(
                f"Time leakage: {earlier} ends at {last} but {later} starts at {first}."
            )


# --------------------------------------------------------------------------------------------
# Pipeline and training
# --------------------------------------------------------------------------------------------

# Bounded search spaces: a handful of knobs that matter, nothing that makes one fit slow.
SEARCH_SPACES: dict[str, dict[str, list[Any]]] = {
    "logistic_regression": {"model__C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]},
    "hist_gradient_boosting": {
        "model__learning_rate": [0.03, 0.05, 0.1, 0.2],
        "model__max_leaf_nodes": [7, 15, 31],
        "model__min_samples_leaf": [20, 50, 100],
        "model__l2_regularization": [0.0, 0.1, 1.0],
    },
    "random_forest": {
        "model__n_estimators": [100, 200, 300],
        "model__max_depth": [None, 6, 10],
        "model__min_samples_leaf": [1, 5, 20],
        "model__max_features": ["sqrt", 0.5],
    },
    "xgboost": {
        "model__learning_rate": [0.03, 0.05, 0.1, 0.2],
        "model__max_depth": [3, 4, 6, 8],
        "model__min_child_weight": [1, 5, 20],
        "model__subsample": [0.7, 0.85, 1.0],
        "model__colsample_bytree": [0.7, 0.85, 1.0],
        "model__reg_lambda": [0.1, 1.0, 10.0],
    },
}


# --------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------


def booster_device(booster: Any) -> str:
    """The device a trained XGBoost booster really used ("cpu", "cuda:0", ...). XGBoost does not
    fail when device='cuda' finds no GPU: it warns and trains on the CPU, so only this tells."""
    config = json.loads(booster.save_config())
    return str(config["learner"]["generic_param"]["device"])


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether XGBoost can train on a CUDA device here: a CUDA build, and a tiny fit that really
    ran on the device. Cached: the answer does not change within a process."""
    import warnings

    import xgboost

    if not xgboost.build_info().get("USE_CUDA", False):
        return False
    try:
        probe = xgboost.DMatrix(np.array([[0.0], [1.0]]), label=np.array([0.0, 1.0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "no visible GPU" fallback warning
            booster = xgboost.train(
                {"device": "cuda", "tree_method": "hist"}, probe, num_boost_round=1
            )
    except xgboost.core.XGBoostError:
        return False
    return booster_device(booster).startswith("cuda")


def _where() -> str:
    """'node N of pool P' for an error message, from what the work pool's template sets."""
    settings = get_settings()
    node = settings.node_name or os.environ.get(NODE_NAME_ENV, "") or "this machine"
    pool = settings.work_pool or "no work pool (a local run)"
    return f"node {node!r} (work pool {pool!r})"


def family_device_problem(family: str, device: str) -> str | None:
    """Why `family` cannot be asked for `device`, or None: only GPU families take cuda."""
    if device == "cuda" and family not in GPU_FAMILIES:
        return (
            f"Model family {family!r} cannot train on a GPU (device='cuda'); use one of "
            f"{list(GPU_FAMILIES)} or device='auto'/'cpu', and send the run to the CPU pool."
        )
    return None


def resolve_device(family: str, requested: str, gpu: bool | None = None) -> str:
    """ "cuda" or "cpu": where `family` fits given the requested device and whether a GPU is
    usable (`gpu`, probed when None). `cuda` with no usable GPU fails, naming node and pool,
    rather than silently training on the CPU for hours."""
    problem = family_device_problem(family, requested)
    if problem:
        raise TrainingError(problem)
    if family not in GPU_FAMILIES:
        return "cpu"
    if requested == "cpu":
        return "cpu"
    usable = cuda_available() if gpu is None else gpu
    if usable:
        return "cuda"
    if requested == "cuda":
        raise TrainingError(
            f"device='cuda' but no usable CUDA GPU on {_where()}: the GPU is missing or taken, the "
            "NVIDIA driver/device plugin is not running, or this image's xgboost is the CPU-only "
            "build (xgboost-cpu). Check the node's nvidia.com/gpu capacity and the GPU image, or "
            "run with device='auto'."
        )
    return "cpu"


def _estimator(family: str, seed: int, device: str = "cpu", threads: int | None = None) -> Any:
    # No class weights: fraud is ~5% of rows, but the decision threshold is chosen on validation,
    # and balanced weights inflate every probability (Brier near the gate's 0.10 ceiling, a
    # calibration plot far off the diagonal) for no gain in ranking (ROC/PR AUC).
    if family == "logistic_regression":
        return LogisticRegression(max_iter=2000, random_state=seed)
    if family == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed)
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=200, min_samples_leaf=5, random_state=seed)
    if family == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(
            tree_method="hist",
            n_estimators=300,
            learning_rate=0.05,
            max_depth=6,
            device=device,
            n_jobs=threads,
            random_state=seed,
        )
    raise TrainingError(f"Unknown model family {family!r}; use one of {list(MODEL_FAMILIES)}.")


def build_pipeline(
    family: str,
    numeric: list[str],
    categorical: list[str],
    seed: int = 0,
    *,
    device: str = "cpu",
    threads: int | None = None,
) -> Pipeline:
    """Preprocessing (per family) + the estimator, as one sklearn Pipeline."""
    estimator = _estimator(family, seed, device, threads)
    numeric_steps: list[tuple[str, Any]] = []
    if family not in ("hist_gradient_boosting", "xgboost"):  # both handle NaN natively
        numeric_steps.append(("impute", SimpleImputer(strategy="median")))
    if family == "logistic_regression":  # only the linear model cares about scale
        numeric_steps.append(("scale", StandardScaler()))
    categorical_pipe = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="<missing>")),
            # Unknown categories at serving time (a new channel) must not crash scoring.
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    transformers: list[tuple[str, Any, list[str]]] = [
        ("numeric", Pipeline(numeric_steps) if numeric_steps else "passthrough", numeric),
    ]
    if categorical:
        transformers.append(("categorical", categorical_pipe, categorical))
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


@dataclass(frozen=True)
class Trial:
    """One search candidate: its parameters and its validation PR AUC."""

    params: dict[str, Any]
    validation_pr_auc: float


def _search(pipeline: Pipeline, split: Split, config: TrainingConfig) -> list[Trial]:
    """Randomized search scored on the validation window (never on test)."""
    both = pd.concat([split.train, split.validation], ignore_index=True)
    # -1: always in training folds; 0: the single validation fold.
    fold = np.r_[np.full(len(split.train), -1), np.zeros(len(split.validation))]
    search = RandomizedSearchCV(
        pipeline,
        SEARCH_SPACES[config.model_family],
        n_iter=config.search_iterations,
        scoring="average_precision",
        cv=PredefinedSplit(fold),
        refit=False,
        random_state=config.seed,
        n_jobs=1,
    )
    search.fit(both[split.features], both[config.label_column].astype(int))
    results = search.cv_results_
    return [
        Trial(dict(params), float(value))
        for params, value in zip(results["params"], results["mean_test_score"], strict=True)
    ]


def _xgboost_search(pipeline: Pipeline, split: Split, config: TrainingConfig) -> list[Trial]:
    """The same search for XGBoost with the data prepared once: preprocessing fitted on train,
    both windows binned into DMatrix objects that every trial reuses. XGBoost keeps a matrix's
    device copy with it, so on a GPU the trials train on the device without copying or
    re-binning the data each time (what a RandomizedSearchCV over the Pipeline would do)."""
    import xgboost
    from sklearn.base import clone

    label = config.label_column
    y_train = split.train[label].astype(int).to_numpy()
    y_val = split.validation[label].astype(int).to_numpy()
    preprocess = clone(pipeline.named_steps["preprocess"]).fit(split.train[split.features])
    x_train = np.asarray(preprocess.transform(split.train[split.features]), dtype=np.float32)
    x_val = np.asarray(preprocess.transform(split.validation[split.features]), dtype=np.float32)
    train_matrix = xgboost.QuantileDMatrix(x_train, label=y_train)
    validation_matrix = xgboost.QuantileDMatrix(x_val, ref=train_matrix)
    model = pipeline.named_steps["model"]
    trials = []
    space = SEARCH_SPACES["xgboost"]
    for candidate in ParameterSampler(space, config.search_iterations, random_state=config.seed):
        settings = {k.removeprefix("model__"): v for k, v in candidate.items()}
        trial = clone(model).set_params(**settings)
        booster = xgboost.train(
            trial.get_xgb_params(), train_matrix, num_boost_round=trial.n_estimators
        )
        scores = booster.predict(validation_matrix)
        trials.append(Trial(dict(candidate), float(average_precision_score(y_val, scores))))
    return trials


def search_candidates(config: TrainingConfig) -> list[dict[str, Any]]:
    """The candidates the search tries, in its order: sklearn's seeded ParameterSampler, the
    same list RandomizedSearchCV draws, so trials run elsewhere are the same trials."""
    space = SEARCH_SPACES[config.model_family]
    return list(ParameterSampler(space, config.search_iterations, random_state=config.seed))


def score_candidate(split: Split, config: TrainingConfig, params: dict[str, Any]) -> Trial:
    """One search trial on its own (a task on any worker): the pipeline with `params`, fitted
    on the train window, its PR AUC on the validation window (never on test)."""
    device = resolve_device(config.model_family, config.device)
    pipeline = build_pipeline(
        config.model_family,
        split.numeric,
        split.categorical,
        config.seed,
        device=device,
        threads=config.threads,
    ).set_params(**params)
    label = config.label_column
    with threadpool_limits(limits=config.threads):
        pipeline.fit(split.train[split.features], split.train[label].astype(int))
        scores = score(pipeline, split.validation[split.features])
    value = average_precision_score(split.validation[label].astype(int), scores)
    return Trial(dict(params), float(value))


def best_trial(trials: list[Trial]) -> Trial:
    """The highest validation PR AUC; the first such candidate on ties (deterministic)."""
    return max(trials, key=lambda t: t.validation_pr_auc)


def train(
    split: Split, config: TrainingConfig | None = None, trials: list[Trial] | None = None
) -> TrainedModel:
    """Fit on train, pick the F1-optimal threshold on validation, score validation. With
    `config.search`, the best of `trials` (scored elsewhere, e.g. one task each on a Dask
    cluster) or of the search run here."""
    config = config or TrainingConfig()
    started = time.perf_counter()
    device = resolve_device(config.model_family, config.device)
    pipeline = build_pipeline(
        config.model_family,
        split.numeric,
        split.categorical,
        config.seed,
        device=device,
        threads=config.threads,
    )
    params: dict[str, Any] = {}
    trials = list(trials or [])
    if config.search:
        if not trials:
            search = _xgboost_search if config.model_family == "xgboost" else _search
            with threadpool_limits(limits=config.threads):
                trials = search(pipeline, split, config)
        best = best_trial(trials)
        pipeline.set_params(**best.params)
        params = {**best.params, "search_best_validation_pr_auc": best.validation_pr_auc}
    y_train = split.train[config.label_column].astype(int)
    with threadpool_limits(limits=config.threads):
        pipeline.fit(split.train[split.features], y_train)
    if device != "cpu":
        used = booster_device(pipeline.named_steps["model"].get_booster())
        if not used.startswith("cuda"):  # the GPU went away between the probe and the fit
            raise TrainingError(
                f"The fit was asked for {device} but XGBoost ran it on {used!r} on {_where()}; "
                "check the node's GPU (nvidia-smi) and re-run."
            )
        # Serving and batch pods have no GPU: the saved model scores on the CPU.
        pipeline.set_params(model__device="cpu")
    y_val = split.validation[config.label_column].astype(int)
    p_val = score(pipeline, split.validation[split.features])
    threshold = choose_threshold(y_val, p_val)
    estimator_params = pipeline.named_steps["model"].get_params()
    params = {**{f"model__{k}": v for k, v in estimator_params.items()}, **params}
    return TrainedModel(
        pipeline=pipeline,
        family=config.model_family,
        params=params,
        validation_metrics=compute_metrics(y_val, p_val, threshold),
        threshold=threshold,
        features=list(split.features),
        categorical=list(split.categorical),
        train_seconds=time.perf_counter() - started,
        device=device,
        trials=trials,
    )


def fingerprint(frame: pd.DataFrame) -> str:
    """Stable sha256 of a frame's values, index and column names (row order matters)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(c) for c in frame.columns]).encode())
    digest.update(json.dumps([str(t) for t in frame.dtypes]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------


def git_commit(cwd: Path = PROJECT_ROOT) -> str:
    """HEAD of the checkout the code runs from, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _installed_xgboost() -> str:
    """`xgboost-cpu==V` or `xgboost==V`: whichever distribution provides the module here."""
    from importlib import metadata

    for dist in ("xgboost-cpu", "xgboost"):
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    raise TrainingError("xgboost is not installed; `make install` installs xgboost-cpu.")


def pinned_requirements(family: str = "hist_gradient_boosting") -> list[str]:
    """Exact versions of what loading the model needs (inference would take ~3 s and guess)."""
    import sklearn
    import skops

    pins = [
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        # mlflow.sklearn saves with skops by default, so loading needs it too.
        f"skops=={skops.__version__}",
    ]
    if family == "xgboost":
        pins.append(_installed_xgboost())
    return pins


def skops_trusted_types(pipeline: Pipeline) -> list[str]:
    """The non-default types the saved model needs, all of them on our allow-list (the same list
    mlre.model_files loads with)."""
    import skops.io

    needed = set(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))
    unexpected = sorted(needed - SKOPS_TRUSTED_TYPES)
    if unexpected:
        raise TrainingError(
            f"The model contains types skops does not trust: {unexpected}; review them and add "
            "them to mlre.model_files.SKOPS_TRUSTED_TYPES if they are safe to load."
        )
    return sorted(needed)


def reference_frame(
    trained: TrainedModel, frame: pd.DataFrame, seed: int, max_rows: int = REFERENCE_MAX_ROWS
) -> pd.DataFrame:
    """A seeded sample of the training features plus the model's scores: the drift baseline."""
    sample = frame.sample(n=min(max_rows, len(frame)), random_state=seed).sort_index()
    out = sample[trained.features].reset_index(drop=True)
    out[PREDICTION_COLUMN] = score(trained.pipeline, out[trained.features])
    return out


def reference_schema(trained: TrainedModel) -> dict[str, str]:
    """Column -> kind ("numeric" / "categorical") of the reference frame."""
    kinds = {
        name: "categorical" if name in trained.categorical else "numeric"
        for name in trained.features
    }
    return {**kinds, PREDICTION_COLUMN: "numeric"}


def run_cost(trained: TrainedModel) -> CostEstimate:
    """The fit's estimated cost on the node this process runs on (Settings.instance_type)."""
    settings = get_settings()
    return estimate_cost(
        trained.train_seconds, settings.instance_type, settings.instance_hourly_usd
    )


def _finite(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items() if math.isfinite(float(v))}


def _run_metrics(
    trained: TrainedModel, training_set: TrainingSet, split: Split, config: TrainingConfig
) -> dict[str, float]:
    """Validation and test metrics at the chosen threshold, plus row counts."""
    y_test = split.test[config.label_column].astype(int)
    p_test = score(trained.pipeline, split.test[trained.features])
    metrics = {
        **_finite(trained.validation_metrics, "validation_"),
        **_finite(compute_metrics(y_test, p_test, trained.threshold), "test_"),
        "rows_in": float(training_set.rows_in),
        "rows_dropped": float(training_set.rows_dropped),
        "train_seconds": trained.train_seconds,
        "threshold": trained.threshold,
    }
    cost = run_cost(trained)
    if cost.usd is not None:
        metrics["estimated_cost_usd"] = cost.usd
    for name, part in split.windows().items():
        metrics[f"{name}_rows"] = float(len(part))
    return metrics


def _run_tags(
    trained: TrainedModel,
    training_set: TrainingSet,
    split: Split,
    config: TrainingConfig,
    feast_project: str,
) -> dict[str, str]:
    return {
        "feature_service": config.feature_service,
        # The whole config, so evaluation and monitoring rebuild the same training set later.
        TRAINING_CONFIG_TAG: config.model_dump_json(),
        "features": ",".join(trained.features),
        "feast_project": feast_project,
        "data_fingerprint": fingerprint(training_set.frame),
        "git_commit": git_commit(),
        "model_family": trained.family,
        "device": trained.device,
        "instance_type": get_settings().instance_type or "unknown",
        "estimated_cost": run_cost(trained).label,
        "threshold": repr(trained.threshold),
        "rows_dropped": str(training_set.rows_dropped),
        "train_window": (
            f"{split.train[config.timestamp_column].min():%Y-%m-%d}/"
            f"{split.train[config.timestamp_column].max():%Y-%m-%d}"
        ),
        "test_window": (
            f"{split.test[config.timestamp_column].min():%Y-%m-%d}/"
            f"{split.test[config.timestamp_column].max():%Y-%m-%d}"
        ),
    }


def _default_artifact_location(tracking_uri: str) -> str | None:
    """Local stores would write artifacts to ./mlruns; keep them under the platform home."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None  # the server decides
    return (get_settings().mlflow_dir / "artifacts").resolve().as_uri()


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _log_trials(trials: list[Trial], experiment_id: str) -> None:
    """One child run per search candidate under the active (parent) run; the best is tagged."""
    import mlflow

    if not trials:
        return
    best = best_trial(trials)
    for number, trial in enumerate(trials):
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"trial-{number}",
            nested=True,
            tags={"search_trial": str(number), "best_trial": str(trial is best).lower()},
        ):
            mlflow.log_params({k.removeprefix("model__"): str(v) for k, v in trial.params.items()})
            mlflow.log_metric("validation_pr_auc", trial.validation_pr_auc)


def log_training_run(
    trained: TrainedModel,
    training_set: TrainingSet,
    split: Split,
    config: TrainingConfig,
    *,
    model_name: str,
    feast_project: str,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    artifact_location: str | None = None,
) -> LoggedModel:
    """Log params, metrics, tags, plots and the drift reference; register a new model version.

    A server that stops answering is a ServiceUnavailableError (flows retry it); an attempt cut
    off that way registers no version, or one without its tags, and a re-run registers a new one.
    """
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from mlre.evaluation import save_plots

    uri = tracking_uri or mlflow.get_tracking_uri()
    doing = f"logging and registering model {model_name!r}"
    with mlflow_answering(uri, doing, "re-run train-model"):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(
            client,
            experiment_name or f"train-{model_name}",
            artifact_location or _default_artifact_location(uri),
        )
        X_train = split.train[trained.features]
        example = X_train.head(5)
        signature = infer_signature(example, trained.pipeline.predict(example))
        tags = _run_tags(trained, training_set, split, config, feast_project)
        params = {
            **{k: str(v) for k, v in config.model_dump().items()},
            **{k: str(v)[:500] for k, v in trained.params.items()},
        }
        metrics = _run_metrics(trained, training_set, split, config)
        with (
            global_tracking_uri(uri),
            mlflow.start_run(experiment_id=experiment_id, tags=tags) as run,
            tempfile.TemporaryDirectory(prefix="mlre-train-") as tmp,
        ):
            mlflow.log_params({**params, "trained_on_device": trained.device})
            mlflow.log_metrics(metrics)
            _log_trials(trained.trials, experiment_id)
            reference_dir = Path(tmp) / "reference"
            reference_dir.mkdir()
            reference_frame(trained, X_train, config.seed).to_parquet(
                reference_dir / "reference.parquet", index=False
            )
            (reference_dir / "schema.json").write_text(
                json.dumps(reference_schema(trained), indent=2)
            )
            mlflow.log_artifacts(str(reference_dir), artifact_path="reference")
            y_val = split.validation[config.label_column].astype(int)
            p_val = score(trained.pipeline, split.validation[trained.features])
            plots = save_plots(y_val, p_val, trained.threshold, Path(tmp) / "plots", "validation")
            for plot in plots:
                mlflow.log_artifact(str(plot), artifact_path="plots")
            info = mlflow.sklearn.log_model(
                trained.pipeline,
                name="model",
                signature=signature,
                input_example=example,
                pip_requirements=pinned_requirements(trained.family),
                skops_trusted_types=skops_trusted_types(trained.pipeline),
                registered_model_name=model_name,
            )
        version = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
        return LoggedModel(
            run_id=run.info.run_id, model_uri=f"models:/{model_name}/{version}", version=version
        )

"""Training: a point-in-time training set from Feast, a time split, a pipeline, MLflow logging.

Prefect-free. `build_training_set` asks Feast for the features each label event saw at its own
timestamp and reports (never hides) the label rows Feast could not serve; `split_by_time` cuts
train / validation / test windows with no overlap; `train` fits one model family and picks the
F1-optimal threshold on validation; `log_training_run` records the run, registers the model, and
stores the drift reference next to it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
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
from sklearn.model_selection import PredefinedSplit, RandomizedSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

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

ModelFamily = Literal["logistic_regression", "hist_gradient_boosting", "random_forest"]
MODEL_FAMILIES: tuple[str, ...] = ModelFamily.__args__  # type: ignore[attr-defined]
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
}


def _estimator(family: str, seed: int) -> Any:
    # No class weights: fraud is ~5% of rows, but the decision threshold is chosen on validation,
    # and balanced weights inflate every probability (Brier near the gate's 0.10 ceiling, a
    # calibration plot far off the diagonal) for no gain in ranking (ROC/PR AUC).
    if family == "logistic_regression":
        return LogisticRegression(max_iter=2000, random_state=seed)
    if family == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed)
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=200, min_samples_leaf=5, random_state=seed)
    raise TrainingError(f"Unknown model family {family!r}; use one of {list(MODEL_FAMILIES)}.")


def build_pipeline(
    family: str, numeric: list[str], categorical: list[str], seed: int = 0
) -> Pipeline:
    """Preprocessing (per family) + the estimator, as one sklearn Pipeline."""
    estimator = _estimator(family, seed)
    numeric_steps: list[tuple[str, Any]] = []
    if family != "hist_gradient_boosting":  # HGB handles NaN natively
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


def _search(
    pipeline: Pipeline, split: Split, config: TrainingConfig
) -> tuple[dict[str, Any], float]:
    """Randomized search scored on the validation window (never on test); returns best params."""
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
    return dict(search.best_params_), float(search.best_score_)


def train(split: Split, config: TrainingConfig | None = None) -> TrainedModel:
    """Fit on train, pick the F1-optimal threshold on validation, score validation."""
    config = config or TrainingConfig()
    started = time.perf_counter()
    pipeline = build_pipeline(config.model_family, split.numeric, split.categorical, config.seed)
    params: dict[str, Any] = {}
    if config.search:
        with threadpool_limits(limits=config.threads):
            best, best_score = _search(pipeline, split, config)
        pipeline.set_params(**best)
        params = {**best, "search_best_validation_pr_auc": best_score}
    y_train = split.train[config.label_column].astype(int)
    with threadpool_limits(limits=config.threads):
        pipeline.fit(split.train[split.features], y_train)
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


def pinned_requirements() -> list[str]:
    """Exact versions of what loading the model needs (inference would take ~3 s and guess)."""
    import sklearn
    import skops

    return [
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        # mlflow.sklearn saves with skops by default, so loading needs it too.
        f"skops=={skops.__version__}",
    ]


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
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
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
                pip_requirements=pinned_requirements(),
                skops_trusted_types=skops_trusted_types(trained.pipeline),
                registered_model_name=model_name,
            )
        version = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
        return LoggedModel(
            run_id=run.info.run_id, model_uri=f"models:/{model_name}/{version}", version=version
        )

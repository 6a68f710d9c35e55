"""Flow `train-model`: point-in-time training set from Feast, time split, fit, log and register."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import flow, task, unmapped
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field, model_validator

from flows import slis
from flows._common import LabelParams, ModelParams, StoreParams, lake_source, server_task, store_for
from flows.resume import resumable
from flows.runners import partition_runner
from mlre import training
from mlre.data.lake import read_events
from mlre.features.services import service_columns
from mlre.features.store import get_feature_service
from mlre.settings import get_settings


class TrainParams(LabelParams, ModelParams, StoreParams):
    """What to train, on which labels and features; shown as a form in the Prefect UI."""

    feature_service: str = "fraud_model_v1"
    label_column: str = Field("is_fraud", description="Binary 0/1 label of the label events.")
    entity_columns: list[str] | None = Field(
        None, description="Join keys of the label events (default: the service's)."
    )
    request_columns: list[str] | None = Field(
        None, description="Request-time values its on-demand views need (default: the service's)."
    )
    passthrough_columns: list[str] = Field(
        default_factory=lambda: ["merchant_category"],
        description="Label-event columns kept for slicing the evaluation, never model inputs.",
    )
    model_family: training.ModelFamily = Field(
        "hist_gradient_boosting",
        description="xgboost can train on a GPU (see device); the others run on the CPU only.",
    )
    device: training.Device = Field(
        "auto",
        description="xgboost only: auto (CUDA when the node has a GPU), cpu, or cuda (fail "
        "fast when the node has none). Send cuda runs to the GPU work pool.",
    )
    validation_days: int = Field(3, ge=1)
    test_days: int = Field(3, ge=1)
    search: bool = Field(False, description="Bounded randomized hyper-parameter search.")
    search_iterations: int = Field(8, ge=1, le=50, description="Candidates the search tries.")
    seed: int = 0
    start: datetime | None = Field(None, description="Only labels at or after this time.")
    end: datetime | None = Field(None, description="Only labels before this time.")

    @model_validator(mode="after")
    def _device_fits_family(self) -> TrainParams:
        problem = training.family_device_problem(self.model_family, self.device)
        if problem:
            raise ValueError(problem)
        return self

    def training_config(
        self, entity_columns: list[str], request_columns: list[str]
    ) -> training.TrainingConfig:
        """The core's config, with the columns the feature service asks for filled in."""
        return training.TrainingConfig(
            feature_service=self.feature_service,
            label_column=self.label_column,
            entity_columns=tuple(self.entity_columns or entity_columns),
            request_columns=tuple(
                request_columns if self.request_columns is None else self.request_columns
            ),
            passthrough_columns=tuple(self.passthrough_columns),
            model_family=self.model_family,
            device=self.device,
            validation_days=self.validation_days,
            test_days=self.test_days,
            search=self.search,
            search_iterations=self.search_iterations,
            seed=self.seed,
        )


@server_task("resolve-training-config", retries=2, retry_delay_seconds=[2, 5])
def resolve_training_config(params: TrainParams) -> training.TrainingConfig:
    """The training config, its join keys and request columns read from the feature service."""
    store = store_for(params.repo_path, params.store_profile)
    service = get_feature_service(store, params.feature_service)
    keys, request = service_columns(store, service)
    return params.training_config(keys, request)


@task(cache_policy=NO_CACHE, name="check-device")
def check_device(config: training.TrainingConfig) -> str:
    """Where the fit will run, decided before any data is read: device='cuda' on a node without
    a usable GPU fails here, in seconds, not after the training set is built."""
    device = training.resolve_device(config.model_family, config.device)
    print(f"{config.model_family} will train on {device} (device={config.device!r}).")
    return device


@dataclass(frozen=True)
class TrainOutcome:
    """What evaluation needs: the version, its run, and the held-out window."""

    model_name: str
    version: str
    run_id: str
    test_start: datetime
    test_end: datetime
    rows_dropped: int
    device: str = "cpu"
    train_seconds: float = 0.0


@task(cache_policy=NO_CACHE, name="load-labels")
def load_labels(label_source: str, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """Label events from the lake (bad data fails here, with no retry)."""
    return read_events(lake_source(label_source), start=start, end=end)


@server_task("build-training-set", retries=2, retry_delay_seconds=[2, 10])
def build_training_set(
    params: TrainParams, config: training.TrainingConfig, labels: pd.DataFrame
) -> training.TrainingSet:
    """Point-in-time features for every label event; dropped rows are counted."""
    store = store_for(params.repo_path, params.store_profile)
    return training.build_training_set(store, labels, config)


@task(cache_policy=NO_CACHE, name="search-trial")
def search_trial(
    config: training.TrainingConfig, split: training.Split, params: dict[str, Any]
) -> training.Trial:
    """One hyper-parameter candidate fitted on train and scored on validation."""
    return training.score_candidate(split, config, params)


def search_trials(
    config: training.TrainingConfig, training_set: training.TrainingSet
) -> list[training.Trial] | None:
    """The search's candidates as one `search-trial` task each on a multi-process task runner
    (MLRE_TASK_RUNNER=dask-*: worker processes or pods, GPU ones with MLRE_DASK_WORKER_POOL=gpu).
    None without a search or in-process, where the fit runs the search itself, as before."""
    if not config.search:
        return None
    with partition_runner() as (runner, plan):
        if not plan.multi_process:
            return None
        split = training.split_by_time(training_set.frame, config)
        futures = runner.map(
            resumable(search_trial, "config", "params"),
            {
                "config": unmapped(config),
                "split": unmapped(split),
                "params": training.search_candidates(config),
            },
        )
        return futures.result()


@task(cache_policy=NO_CACHE, name="fit-model")
def fit_model(
    config: training.TrainingConfig,
    training_set: training.TrainingSet,
    trials: list[training.Trial] | None = None,
) -> tuple[training.Split, training.TrainedModel]:
    """Split by time and fit the pipeline, with the best of `trials` when the search ran
    apart (no retries: a failure here is about the data)."""
    split = training.split_by_time(training_set.frame, config)
    return split, training.train(split, config, trials)


@server_task("log-and-register", retries=3, retry_delay_seconds=[2, 5, 15])
def log_and_register(
    params: TrainParams,
    config: training.TrainingConfig,
    trained: training.TrainedModel,
    training_set: training.TrainingSet,
    split: training.Split,
) -> training.LoggedModel:
    """Log the run to MLflow and register a new model version."""
    settings = get_settings()
    store = store_for(params.repo_path, params.store_profile)
    return training.log_training_run(
        trained,
        training_set,
        split,
        config,
        model_name=params.model_name or settings.model_name,
        feast_project=store.project,
        tracking_uri=settings.mlflow_tracking_uri,
    )


@flow(name="train-model", log_prints=True, **slis.flow_run_hooks())
def train_model(params: TrainParams | None = None) -> TrainOutcome:
    """Train a new model version on point-in-time features and register it in MLflow."""
    params = params or TrainParams()
    settings = get_settings()
    config = resolve_training_config(params)
    check_device(config)
    labels = load_labels(params.label_source, params.start, params.end)
    # Resumable (flows/resume.py): a retry of a run that got this far reads the training set,
    # the fitted model and the registered version back, and never registers a second version.
    training_set = resumable(build_training_set, "params", "config")(params, config, labels)
    trials = search_trials(config, training_set)
    split, trained = resumable(fit_model, "config")(config, training_set, trials)
    logged = resumable(log_and_register, "params", "config")(
        params, config, trained, training_set, split
    )
    model_name = params.model_name or settings.model_name
    ts = config.timestamp_column
    create_table_artifact(
        key="training-data",
        table=[
            {
                "window": name,
                "rows": len(frame),
                "positives": int(frame[config.label_column].sum()),
                "from": str(frame[ts].min()),
                "to": str(frame[ts].max()),
            }
            for name, frame in split.windows().items()
        ]
        + [
            {
                "window": "dropped by Feast (no features in ttl)",
                "rows": training_set.rows_dropped,
                "positives": "",
                "from": "",
                "to": "",
            }
        ],
        description=f"{model_name} v{logged.version}: {trained.family} on {trained.device}, "
        f"threshold {trained.threshold:.3f}, trained in {trained.train_seconds:.1f}s, cost "
        f"{training.run_cost(trained).label}",
    )
    create_link_artifact(
        key="mlflow-model-version",
        link=f"{settings.mlflow_tracking_uri}/#/models/{model_name}/versions/{logged.version}",
        link_text=f"{model_name} version {logged.version} in MLflow",
    )
    return TrainOutcome(
        model_name=model_name,
        version=logged.version,
        run_id=logged.run_id,
        test_start=split.test[ts].min().to_pydatetime(),
        test_end=split.test[ts].max().to_pydatetime(),
        rows_dropped=training_set.rows_dropped,
        device=trained.device,
        train_seconds=trained.train_seconds,
    )

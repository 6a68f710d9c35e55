"""Fixtures of the bad-input corpus: ONE platform for the whole corpus, built once.

The platform is a materialized local store, a champion with a previous champion and a refused
version on a real MLflow server, and a prediction log, so every case can show that a rejected
input left all of it untouched. The corpus owns its MLflow server and Prefect harness (fixtures of
`tests/integration` are not visible here); nested harnesses are supported by Prefect.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from mlre import inference, prediction_log, registry
from mlre.data.lake import read_events
from mlre.mlflow_uri import global_tracking_uri
from mlre.settings import Settings, get_settings
from tests.integration.conftest import build_feature_env, recent_config
from tests.reliability.harness import SERVICE, Platform, promote, register_versions
from tests.reliability.source_cases import SOURCE, SourceCase, write_case
from tests.support.mlflow_server import MlflowServer
from tests.support.servers import run_dir

INPUTS = ["txn_count_1d", "txn_amount_avg_1d", "avg_amount_30d", "amount_to_avg_30d_ratio"]
VIEWS = ("customer_daily_stats_fv", "customer_hourly_stats_fv")
MODEL = "fraud-reliability"
NO_CHAMPION_MODEL = "fraud-reliability-no-champion"


@pytest.fixture(scope="session")
def reliability_servers(servers_root: Path) -> Iterator[MlflowServer]:
    """A private MLflow server and a Prefect test harness, started side by side (both take
    seconds). Fixtures of `tests/integration` are not visible here; Prefect supports nesting."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    server = MlflowServer(data_dir=run_dir(servers_root) / "mlflow-reliability")
    starting = threading.Thread(target=server.start, name="start-mlflow")
    starting.start()
    try:
        with (
            prefect_test_harness(server_startup_timeout=60),
            # No heartbeat thread: every flow run would wait up to 1 s for it to stop, and the
            # corpus runs ~60 short, failing flows (zombie detection is not under test here).
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        ):
            starting.join()
            if not server.running:
                raise RuntimeError(f"MLflow server did not start; see {server.log_path}")
            yield server
    finally:
        starting.join()
        server.stop()


def platform_env(settings: Settings, tracking_uri: str) -> dict[str, str]:
    """What the flows read: the private home, the MLflow server and the default model."""
    return {
        "MLRE_HOME": str(settings.home),
        "MLRE_STORE_PROFILE": "local",
        "MLRE_MLFLOW_URI": tracking_uri,
        "MLRE_MODEL_NAME": MODEL,
    }


@contextmanager
def exported(values: dict[str, str]) -> Iterator[None]:
    """Export `values`; afterwards give back the WHOLE environment (flows export more of it)."""
    saved = dict(os.environ)
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def _fit_tiny_model(store, labels: pd.DataFrame) -> Pipeline:
    """A small pipeline on point-in-time features of the service (enough to load and score)."""
    rows = labels[["customer_id", "event_timestamp", "amount", "is_fraud"]]
    features = store.get_historical_features(
        entity_df=rows, features=store.get_feature_service(SERVICE)
    ).to_df()
    model = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500))
    return model.fit(features[INPUTS].astype("float64"), features["is_fraud"])


def _log_model(model: Pipeline, tracking_uri: str) -> str:
    """Log the model once; every version of the corpus is registered from this URI (no upload)."""
    with global_tracking_uri(tracking_uri):
        mlflow.set_experiment("reliability")
        with mlflow.start_run():
            mlflow.set_tag(inference.FEATURE_SERVICE_TAG, SERVICE)
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                pip_requirements=["scikit-learn"],
                # SimpleImputer keeps a numpy dtype, which skops does not trust by default.
                skops_trusted_types=["numpy.dtype"],
            )
    return info.model_uri


def score_last_day(settings: Settings, tracking_uri: str) -> pd.DataFrame:
    """Prediction-log rows for the last day of transactions, scored by the champion."""
    from mlre.features.store import open_store

    model, version, service = inference.load_champion(tracking_uri, MODEL)
    events = read_events(settings.lake_dir / "sources" / "transactions")
    last_day = events[events["event_timestamp"] >= events["event_timestamp"].max().normalize()]
    return inference.score_frame(
        open_store(settings), model, service, last_day.drop(columns=["is_fraud"]),
        model_name=MODEL, model_version=version, request_id_column="transaction_id",
    )  # fmt: skip


def _seed_prediction_log(settings: Settings, tracking_uri: str) -> None:
    """Score the last day with the champion so the log has rows a bad input could damage."""
    scored = score_last_day(settings, tracking_uri)
    prediction_log.write_predictions(scored, settings.lake_dir, MODEL, run_id="seed")


@pytest.fixture(scope="session")
def platform(
    tmp_path_factory: pytest.TempPathFactory,
    reliability_servers: MlflowServer,
) -> Platform:
    """The platform every case runs against (see the module docstring)."""
    from flows.materialize import MaterializeParams, materialize_features

    config = recent_config(days=6, n_customers=200)
    env = build_feature_env(tmp_path_factory, "local", config)
    uri = reliability_servers.tracking_uri
    with exported(platform_env(env.settings, uri)):
        materialize_features(MaterializeParams(partitions=1))
        events = read_events(env.settings.lake_dir / "sources" / "transactions")
        train = events[events["event_timestamp"] < config.end - timedelta(days=1)]
        model_uri = _log_model(_fit_tiny_model(env.reopen(), train), uri)
        v1, v2, v3 = register_versions(uri, model_uri, MODEL, 3)
        client = MlflowClient(uri)
        promote(client, env.settings, MODEL, v1)
        promote(client, env.settings, MODEL, v2)
        registry.record_refusal(client, MODEL, v3, ["ROC AUC 0.51 < 0.70"])
        register_versions(uri, model_uri, NO_CHAMPION_MODEL, 1)
        _seed_prediction_log(env.settings, uri)
    return Platform(
        settings=env.settings,
        tracking_uri=uri,
        model_name=MODEL,
        no_champion_model=NO_CHAMPION_MODEL,
        versions={"previous": v1, "champion": v2, "refused": v3},
        customer_ids=tuple(int(c) for c in config.customer_ids),
        views=VIEWS,
        model_uri=model_uri,
    )


@pytest.fixture(scope="module", autouse=True)
def platform_exported(platform: Platform) -> Iterator[Platform]:
    """Each module runs with the platform's environment; the session's comes back afterwards."""
    with exported(platform_env(platform.settings, platform.tracking_uri)):
        yield platform


@pytest.fixture
def inject_bad_file(platform: Platform) -> Iterator[Callable[[SourceCase], Path]]:
    """`inject_bad_file(case)` writes the case's file into the daily source; removed afterwards."""
    folders: list[Path] = []

    def inject(case: SourceCase) -> Path:
        path = write_case(case, platform.source_dir(SOURCE))
        folders.append(path.parent)
        return path

    yield inject
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def source_moved_away(platform: Platform) -> Iterator[Path]:
    """The daily source folder renamed away for one case (a source that was never landed)."""
    folder = platform.source_dir(SOURCE)
    aside = folder.with_name(f".{folder.name}.aside")
    folder.rename(aside)
    try:
        yield folder
    finally:
        aside.rename(folder)

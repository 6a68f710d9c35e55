"""The partitioned flows on a real multi-process Dask LocalCluster (2 worker processes): the same
online values and the same scores as in-process, and a worker SIGKILLed mid-partition is survived.

Worker processes read their settings from the environment they start with, so every test exports
its store's settings (MLRE_*) before the flow run starts its cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import dask
import pandas as pd
import pytest

from flows.inference import BatchInferenceParams, batch_inference
from flows.materialize import MaterializeParams, materialize_features
from mlre.features.consistency import EVENT_TS
from mlre.settings import get_settings
from tests.integration.conftest import NOW, FeatureEnv, recent_config
from tests.support import dask_faults
from tests.support.champion import register_champion
from tests.support.mlflow_server import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VIEWS = ["customer_daily_stats_fv", "customer_hourly_stats_fv"]
WORKERS = 2
PARTITIONS = 4

Export = Callable[..., None]


@pytest.fixture
def export(monkeypatch: pytest.MonkeyPatch, prefect_harness: None) -> Iterator[Export]:
    """`export(env, runner)`: the flows (and the Dask workers they start) use `env`'s store."""

    def use(env: FeatureEnv, runner: str, **extra: str) -> None:
        settings = env.settings
        values = {
            "MLRE_HOME": str(settings.home),
            "MLRE_STORE_PROFILE": settings.store_profile,
            "MLRE_REDIS_CONNECTION_STRING": settings.redis_connection_string,
            "MLRE_REGISTRY_URI": settings.registry_uri,
            "MLRE_TASK_RUNNER": runner,
            "MLRE_DASK_WORKERS": str(WORKERS),
            **extra,
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


def _materialize() -> list:
    state = materialize_features(
        MaterializeParams(partitions=PARTITIONS, validate_sources=False), return_state=True
    )
    assert state.is_completed(), state.message
    return state.result()


def _assert_same_online_values(ours: FeatureEnv, reference: FeatureEnv) -> None:
    for view in VIEWS:
        mine, theirs = ours.online_rows(view), reference.online_rows(view)
        assert mine[EVENT_TS].notna().sum() > 0.9 * ours.config.n_customers
        pd.testing.assert_frame_equal(mine, theirs)


@pytest.mark.parametrize("profile", ["local", "production"])
def test_materialization_on_dask_equals_in_process(
    make_feature_env: Callable[..., FeatureEnv], export: Export, profile: str
) -> None:
    serial = make_feature_env(profile, config=recent_config())
    distributed = make_feature_env(profile, config=recent_config())
    export(serial, "in-process")
    _materialize()

    export(distributed, "dask-local")
    results = _materialize()

    assert sorted(r.partition for r in results) == sorted(list(range(PARTITIONS)) * len(VIEWS))
    _assert_same_online_values(distributed, serial)


def test_worker_killed_mid_partition_is_retried_and_the_store_converges(
    make_feature_env: Callable[..., FeatureEnv], export: Export, tmp_path: Path
) -> None:
    serial = make_feature_env("local", config=recent_config())
    distributed = make_feature_env("local", config=recent_config())
    export(serial, "in-process")
    _materialize()
    marker = tmp_path / "killed"

    export(distributed, "dask-local", **{dask_faults.KILL_MARKER_ENV: str(marker)})
    with dask.config.set({"distributed.worker.preload": [dask_faults.PRELOAD]}):
        results = _materialize()

    assert marker.exists()  # a worker did die after writing part of its partition
    daily = [r for r in results if r.feature_view == VIEWS[0]]
    assert sum(r.keys for r in daily) == distributed.config.n_customers
    _assert_same_online_values(distributed, serial)


def _scored_log(summary: dict[str, object]) -> pd.DataFrame:
    """The prediction-log rows a run wrote, without the random per-row request ids."""
    frame = pd.read_parquet(str(summary["partition"]))
    return frame.drop(columns=["request_id"])


def test_batch_inference_over_partitions_equals_serial_row_for_row(
    make_feature_env: Callable[..., FeatureEnv], export: Export, mlflow_server: MlflowServer
) -> None:
    env = make_feature_env("local", config=recent_config(now=NOW))
    env.store.materialize(env.config.start, NOW)
    source = pd.read_parquet(env.settings.lake_dir / "sources" / "transactions")
    cutoff = source["event_timestamp"].max().normalize()
    name = register_champion(
        env, mlflow_server.tracking_uri, source[source.event_timestamp < cutoff]
    )
    params = {"model_name": name, "now": NOW, "start": cutoff, "end": NOW}

    export(env, "in-process", MLRE_MLFLOW_URI=mlflow_server.tracking_uri)
    serial = batch_inference(BatchInferenceParams(**params, partitions=1))
    export(env, "dask-local", MLRE_MLFLOW_URI=mlflow_server.tracking_uri)
    parallel = batch_inference(BatchInferenceParams(**params, partitions=3))

    assert (
        serial["requests"] == parallel["requests"] == len(source[source.event_timestamp >= cutoff])
    )
    assert serial["scored"] == parallel["scored"] > 0
    pd.testing.assert_frame_equal(_scored_log(parallel), _scored_log(serial))


def test_search_trials_on_dask_are_the_in_process_searchs_trials(
    monkeypatch: pytest.MonkeyPatch, prefect_harness: None, tmp_path: Path
) -> None:
    """train-model's hyper-parameter search as one task per candidate on 2 worker processes:
    the same candidates, the same validation PR AUC as the search the fit runs in-process."""
    from prefect import flow

    from flows.training import search_trials
    from mlre import training
    from tests.unit.test_training import _frame

    config = training.TrainingConfig(
        model_family="hist_gradient_boosting", search=True, search_iterations=4, seed=3
    )
    frame = _frame(days=15, per_day=60)
    training_set = training.TrainingSet(
        frame=frame, feature_names=["x", "noise", "preferred_channel"], rows_in=len(frame),
        rows_dropped=0,
    )  # fmt: skip
    for name, value in {
        "MLRE_TASK_RUNNER": "dask-local",
        "MLRE_DASK_WORKERS": str(WORKERS),
        "MLRE_RESULTS_URI": str(tmp_path / "results"),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()

    @flow(name="search-on-dask")
    def search() -> list[training.Trial] | None:
        return search_trials(config, training_set)

    on_dask = search()
    in_process = training.train(training.split_by_time(frame, config), config).trials
    assert on_dask is not None
    assert [t.params for t in on_dask] == [t.params for t in in_process]
    for one, other in zip(on_dask, in_process, strict=True):
        assert one.validation_pr_auc == pytest.approx(other.validation_pr_auc, abs=1e-12)

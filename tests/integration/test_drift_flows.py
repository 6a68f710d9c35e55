"""check-drift, monitor-performance and the retrain automation: real MLflow, real Prefect server.

One module fixture trains a champion on generated data and scores its held-out days into the
prediction log (the clean window). A drifted window is the same rows with shifted inputs,
re-scored by the model and moved 30 days ahead; concept drift is the same transactions with the
labels the generator draws under `Scenario(concept_drift=1.0)`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from flows import automations
from flows.drift import (
    CheckDriftModelsParams,
    CheckDriftParams,
    check_drift,
    check_drift_models,
    run_checks,
)
from flows.inference import BatchInferenceParams, batch_inference
from flows.monitoring import MonitorParams, monitor_performance
from flows.training import TrainParams, train_model
from mlre import inference, prediction_log, registry
from mlre.data.generator import Scenario, generate_sources, write_source
from mlre.drift import DriftError
from mlre.monitoring import MonitoringConfig
from mlre.settings import get_settings
from mlre.waiting import WaitTimeout, wait_until
from tests.integration.conftest import build_feature_env, recent_config
from tests.support.prefect_runs import deployment_runs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TRAIN = TrainParams(model_family="random_forest", validation_days=2, test_days=3)
CONCEPT_LABELS = "sources/transactions_concept"
SHIFT_DAYS = 30
# Daily windows of ~2k customers hold a few dozen frauds: judge them with smaller minimums.
MONITOR = MonitoringConfig(min_rows=100, min_positives=5)


@dataclass(frozen=True)
class Monitored:
    """A champion with a prediction log: its clean window and a drifted one."""

    model_name: str
    version: str
    client: MlflowClient
    clean: tuple[datetime, datetime]
    drifted: tuple[datetime, datetime]


def _use(home: object, tracking_uri: str, model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the flows at this module's home, MLflow and model."""
    monkeypatch.setenv("MLRE_HOME", str(home))
    monkeypatch.setenv("MLRE_MLFLOW_URI", tracking_uri)
    monkeypatch.setenv("MLRE_MODEL_NAME", model_name)
    get_settings.cache_clear()


def _drifted_copy(log: pd.DataFrame, model: Any) -> pd.DataFrame:
    """The same predictions with every numeric input tripled, re-scored, 30 days later."""
    inputs = [str(name) for name in model.feature_names_in_]
    out = log.copy()
    for column in inputs:
        if pd.api.types.is_numeric_dtype(out[column]):
            # Same dtype as the log's other partitions (the log refuses int64 vs double).
            out[column] = (out[column] * 3 + 1).astype(out[column].dtype)
    out["score"] = model.predict_proba(out[inputs])[:, 1]
    out["event_timestamp"] = out["event_timestamp"] + pd.Timedelta(days=SHIFT_DAYS)
    return out


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, mlflow_server, prefect_harness) -> tuple[Monitored, Any]:
    """Train, crown and score a champion; write concept-drift labels and a drifted window."""
    # No weekly seasonality: the 4 training days and the 3 held-out days are different weekdays.
    config = replace(
        recent_config(days=10, n_customers=2_000), scenario=Scenario(seasonal_amplitude=0)
    )
    env = build_feature_env(tmp_path_factory, "local", config)
    model_name = f"drift-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _use(env.settings.home, mlflow_server.tracking_uri, model_name, monkeypatch)
        trained = train_model(TRAIN)
        client = MlflowClient(mlflow_server.tracking_uri)
        client.set_registered_model_alias(model_name, registry.CHAMPION, trained.version)
        clean = (trained.test_start, trained.test_start + timedelta(days=TRAIN.test_days))
        batch_inference(BatchInferenceParams(start=clean[0], end=clean[1]))
        log = prediction_log.read_predictions(env.settings.lake_dir, model_name)
        model = inference.load_version(mlflow_server.tracking_uri, model_name, trained.version)
        prediction_log.write_predictions(
            _drifted_copy(log, model), env.settings.lake_dir, model_name, run_id="drifted"
        )
        concept = generate_sources(
            replace(config, scenario=Scenario(seasonal_amplitude=0, concept_drift=1.0))
        )
        write_source(concept["transactions"], env.settings.lake_dir / CONCEPT_LABELS)
    get_settings.cache_clear()
    shift = timedelta(days=SHIFT_DAYS)
    return Monitored(
        model_name, trained.version, client, clean, (clean[0] + shift, clean[1] + shift)
    ), env


@pytest.fixture
def champion(monitored, mlflow_server, monkeypatch) -> Monitored:
    """The module's champion, with the flows' environment pointed at it."""
    state, env = monitored
    _use(env.settings.home, mlflow_server.tracking_uri, state.model_name, monkeypatch)
    yield state
    get_settings.cache_clear()


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The flow run's artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def _drift(champion: Monitored, window: tuple[datetime, datetime], **kw: Any) -> Any:
    """Run check-drift on a window; returns the final state."""
    params = CheckDriftParams(start=window[0], end=window[1], **kw)
    return check_drift(params, return_state=True)


# --------------------------------------------------------------------------------------------
# check-drift
# --------------------------------------------------------------------------------------------


def test_clean_window_is_quiet_and_drifted_window_is_flagged_with_artifacts(champion) -> None:
    quiet_state = _drift(champion, champion.clean, emit_events=False)
    quiet = quiet_state.result()
    assert not quiet.drifted, quiet.reasons
    assert not quiet.prediction_drifted

    state = _drift(champion, champion.drifted, emit_events=False)
    outcome = state.result()
    assert outcome.drifted
    assert outcome.prediction_drifted
    assert outcome.version == champion.version
    assert len(outcome.drifted_columns) >= 3

    artifacts = _artifacts(state.state_details.flow_run_id)
    assert {"drift-columns", "drift-verdict", "drift-report"} <= set(artifacts)
    table = artifacts["drift-columns"].data
    table = pd.read_json(table) if isinstance(table, str) else pd.DataFrame(table)
    assert "score" in set(table["column"])
    assert {"kind", "method", "threshold", "borderline", "missing_share_cur"} <= set(table.columns)
    assert set(outcome.drifted_columns) <= set(table.loc[table["drifted"], "column"]) | set(
        table.loc[table["missing_surge"], "column"]
    )
    assert "Drift detected" in artifacts["drift-verdict"].data
    assert outcome.report_url
    assert f"({outcome.report_url})" in artifacts["drift-report"].data  # the link's target
    run_id = champion.client.get_model_version(champion.model_name, champion.version).run_id
    html = outcome.report_url.rsplit("/", 1)[1]
    stored = [a.path for a in champion.client.list_artifacts(run_id, "drift")]
    assert f"drift/{html}" in stored


def test_several_models_checked_on_dask_each_get_check_drifts_verdict(
    champion, monitored, monkeypatch
) -> None:
    """check-drift-models with the Evidently checks on a 2-process Dask LocalCluster: each
    model's verdict, columns and reasons equal check-drift's for it, and its own artifacts."""
    _, env = monitored
    steady = f"{champion.model_name}-steady"  # the same run, its clean log moved to the window
    run_id = champion.client.get_model_version(champion.model_name, champion.version).run_id
    champion.client.create_registered_model(steady)
    version = champion.client.create_model_version(steady, f"runs:/{run_id}/model", run_id)
    champion.client.set_registered_model_alias(steady, registry.CHAMPION, version.version)
    log = prediction_log.read_predictions(env.settings.lake_dir, champion.model_name)
    clean = log[log["event_timestamp"] < pd.Timestamp(champion.clean[1])].copy()
    clean["event_timestamp"] += pd.Timedelta(days=SHIFT_DAYS)
    clean["model_version"] = version.version
    prediction_log.write_predictions(clean, env.settings.lake_dir, steady, run_id="steady")
    window = {"start": champion.drifted[0], "end": champion.drifted[1], "emit_events": False}
    monkeypatch.setenv("MLRE_TASK_RUNNER", "dask-local")
    monkeypatch.setenv("MLRE_DASK_WORKERS", "2")
    get_settings.cache_clear()

    names = [champion.model_name, steady]
    state = check_drift_models(
        CheckDriftModelsParams(model_names=names, **window), return_state=True
    )
    outcomes = state.result()

    assert [o.drifted for o in outcomes] == [True, False]
    monkeypatch.setenv("MLRE_TASK_RUNNER", "in-process")
    get_settings.cache_clear()
    for outcome in outcomes:
        alone = check_drift(CheckDriftParams(model_name=outcome.model_name, **window))
        assert outcome.drifted_columns == alone.drifted_columns
        assert outcome.reasons == alone.reasons
    keys = set(_artifacts(state.state_details.flow_run_id))
    for name in names:
        assert {f"drift-verdict-{name}", f"drift-columns-{name}", f"drift-report-{name}"} <= keys


def test_empty_window_fails_clearly(champion) -> None:
    empty = (champion.clean[0] - timedelta(days=400), champion.clean[0] - timedelta(days=399))
    with pytest.raises(DriftError, match=rf"{champion.model_name}.*version {champion.version}"):
        check_drift(CheckDriftParams(start=empty[0], end=empty[1], emit_events=False))


def test_missing_or_retyped_columns_name_model_version_and_column(champion) -> None:
    from flows.drift import load_reference

    reference = load_reference.fn(champion.model_name, None)
    current = reference.frame.rename(columns={"prediction": "score"})
    column = next(c for c, k in reference.schema.items() if k == "numerical")
    params = CheckDriftParams(emit_events=False)
    with pytest.raises(DriftError, match=rf"version {champion.version}.*\['{column}'\]"):
        run_checks.fn(reference, current.drop(columns=[column]), params)
    with pytest.raises(DriftError, match=rf"{champion.model_name}.*{column}: numeric -> string"):
        run_checks.fn(reference, current.assign(**{column: current[column].astype(str)}), params)


def test_version_without_reference_fails_clearly(champion) -> None:
    client = champion.client
    name = f"noref-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(name, source=run.info.artifact_uri, run_id=run.info.run_id)
    params = CheckDriftParams(model_name=name, version=mv.version, emit_events=False)
    with pytest.raises(DriftError, match=rf"{name}.*version {mv.version}.*no drift reference"):
        check_drift(params)


# --------------------------------------------------------------------------------------------
# monitor-performance
# --------------------------------------------------------------------------------------------


def test_concept_drift_is_caught_by_performance_not_by_input_drift(champion) -> None:
    window = {"start": champion.clean[0], "end": champion.clean[1], "config": MONITOR}
    healthy = monitor_performance(MonitorParams(emit_events=False, **window))
    assert not healthy.degraded, healthy.reasons
    pooled = healthy.windows[-1]
    assert pooled.rows > 500
    # The clean labels of the held-out window are the ones the version was evaluated on.
    assert pooled.roc_auc == pytest.approx(healthy.baseline.roc_auc, abs=0.02)

    state = monitor_performance(
        MonitorParams(emit_events=False, label_source=CONCEPT_LABELS, **window),
        return_state=True,
    )
    drifted = state.result()
    assert drifted.degraded, drifted.reasons
    assert drifted.windows[-1].roc_auc < healthy.baseline.roc_auc - MONITOR.max_auc_drop
    assert any("All windows pooled" in r for r in drifted.reasons)
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert "Performance degraded" in artifacts["performance-verdict"].data
    assert {"performance-windows"} <= set(artifacts)

    # The inputs of the same window did not move: input drift stays quiet on concept drift.
    inputs = _drift(champion, champion.clean, emit_events=False).result()
    assert not inputs.drifted, inputs.reasons


# --------------------------------------------------------------------------------------------
# The closed loop: event -> automation -> retrain run, once per cooldown
# --------------------------------------------------------------------------------------------


def _runs_of(deployment_id: Any) -> int:
    return len(deployment_runs(deployment_id))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll until condition() holds or the timeout passes; whether it held."""
    try:
        return wait_until(condition, timeout_s=timeout_s, what="condition", interval_s=1.0)
    except WaitTimeout:
        return condition()


def _drift_events(model_name: str) -> list[Any]:
    """The drift events the server holds about a model."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[automations.DRIFT_EVENT]),
        resource=EventResourceFilter(id=[automations.model_resource_id(model_name)]),
    )
    with get_client(sync_client=True) as client:
        return client.read_events(flt, limit=10).events


def test_check_drift_emits_the_drift_event_of_its_model(champion) -> None:
    outcome = _drift(champion, champion.drifted).result()
    assert outcome.drifted
    (event, *_) = wait_until(
        lambda: _drift_events(champion.model_name), timeout_s=60, what="the drift event"
    )
    assert event.resource["mlre.model.version"] == champion.version
    assert event.payload["reasons"]


@pytest.mark.fault("drift automation fired twice")
def test_drift_event_runs_the_retrain_deployment_once_per_cooldown(prefect_harness) -> None:
    """The automation's cooldown, on drift events as check-drift emits them (the test above).

    The events are emitted here, about a model of this test's own, rather than by check-drift
    runs: Prefect's local server (SQLite) evaluates triggers while the flow's own writes are in
    flight, and its in-memory messaging drops an event after four immediate retries of
    "database is locked" (seen in CI). The model of its own also keeps the other tests' drift
    events, which the trigger service may still be evaluating, away from these automations."""
    from flows.pipeline import ml_pipeline

    model = f"retrain-{uuid.uuid4().hex[:6]}"
    weekly = ml_pipeline.to_deployment(name=model).apply()  # runs of this test alone
    witness = ml_pipeline.to_deployment(name=f"witness-{uuid.uuid4().hex[:6]}").apply()
    cooldown = timedelta(minutes=30)
    first = automations.ensure_automations(f"ml-pipeline/{model}", cooldown, model_name=model)
    again = automations.ensure_automations(f"ml-pipeline/{model}", cooldown, model_name=model)
    assert [a.id for a in first] == [a.id for a in again]  # idempotent: no second automation
    assert first[0].trigger.within == cooldown
    # A witness with no cooldown on the same events: once it has run for an event, the trigger
    # service has processed that event, so "no second retrain" is a checked fact, not a timeout.
    automations.retrain_automation(model, witness, timedelta(0), name=f"witness-{model}").create()
    assert _runs_of(weekly) == 0

    def drift() -> None:
        automations.emit_model_event(automations.DRIFT_EVENT, model, "1", ["share 0.6 > 0.5"])

    drift()
    assert _wait_for(lambda: _runs_of(weekly) == 1), "the automation did not start a retrain"
    drift()  # a second drift inside the cooldown
    assert _wait_for(lambda: _runs_of(witness) == 2), "the second event was not processed"
    time.sleep(2)
    assert _runs_of(weekly) == 1

    # A changed cooldown updates the same automation in place.
    changed = automations.ensure_automations(
        f"ml-pipeline/{model}", timedelta(hours=2), model_name=model
    )
    assert changed[0].id == first[0].id
    assert changed[0].trigger.within == timedelta(hours=2)

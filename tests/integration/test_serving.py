"""The prediction service against real Feast stores (SQLite, Redis), a real MLflow server and,
for shutdown, a real uvicorn process."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from mlre.canary import CANARY_SHARE_TAG, in_canary
from mlre.prediction_log import read_predictions
from mlre.serving_config import ServingConfig
from mlre.settings import Settings
from mlre.waiting import wait_until
from serving.app import create_app
from serving.features import FeatureFetcher, ServicePlan, plan_service, read_features
from serving.models import mlflow_loader
from tests.integration.conftest import FeatureEnv, build_feature_env, recent_config
from tests.support.champion import log_sklearn_version
from tests.support.serving_process import HOLD_THE_LOG, serving_env, serving_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVICE = "fraud_model_v1"
INPUTS = ["txn_count_1d", "txn_amount_avg_1d", "avg_amount_30d", "amount_to_avg_30d_ratio"]
N_CUSTOMERS = 400


# --------------------------------------------------------------------------------------------
# Helpers the canary flow test shares
# --------------------------------------------------------------------------------------------


def materialize(env: FeatureEnv) -> None:
    """Load the daily view into the online store with the project's engine."""
    from mlre.features.materialize import Window, materialize_view

    end = datetime.now(UTC)
    view = env.store.get_feature_view("customer_daily_stats_fv")
    materialize_view(env.store, view, Window(end - timedelta(days=30), end), partitions=1)


def customers(env: FeatureEnv) -> list[int]:
    """Entity keys the generator produced."""
    return [int(c) for c in env.config.customer_ids]


def random_instances(keys: list[int], n: int, rng: np.random.Generator) -> list[dict]:
    """n instances of random known customers with plausible amounts."""
    picked = rng.choice(keys, size=n)
    amounts = rng.lognormal(3.5, 0.8, size=n)
    return [
        {"customer_id": int(c), "amount": round(float(a), 2)}
        for c, a in zip(picked, amounts, strict=True)
    ]


def online_frame(env: FeatureEnv, seed: int = 0, n: int = 2_000) -> pd.DataFrame:
    """Served feature values for random (customer, amount) pairs: what the service will see."""
    rows = random_instances(customers(env), n, np.random.default_rng(seed))
    plan = plan_service(env.store, env.store.get_feature_service(SERVICE))
    return read_features(env.store, plan, rows)[INPUTS].astype("float64")


def register_model(
    env: FeatureEnv, tracking_uri: str, model_name: str, *, seed: int = 0, shift: float = 0.0
) -> str:
    """Fit a small logistic model on served features, register it; `shift` adds log-odds."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    frame = online_frame(env, seed)
    rng = np.random.default_rng(seed)
    ratio = frame["amount_to_avg_30d_ratio"].fillna(1.0).to_numpy()
    label = ((ratio + rng.normal(0, 0.7, len(frame))) > 1.8).astype(int)
    model = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("model", LogisticRegression()),
        ]
    ).fit(frame, label)
    model.named_steps["model"].intercept_ += shift
    version = log_sklearn_version(tracking_uri, f"serving-{model_name}", model, model_name)
    MlflowClient(tracking_uri).set_model_version_tag(
        model_name, version, "feature_service", SERVICE
    )
    return version


def serving_settings(env: FeatureEnv, tracking_uri: str, model_name: str) -> Settings:
    return env.settings.model_copy(update={"mlflow_uri": tracking_uri, "model_name": model_name})


def fast_config(**overrides: object) -> ServingConfig:
    """Short poll/flush intervals so tests see changes quickly, and a generous feature-read
    budget: a loaded CI machine must not turn a slow SQLite read into a (correct) timeout
    fallback in a test about something else. Tests of the timeout set their own."""
    values: dict[str, object] = {
        "poll_interval_s": 0.2,
        "feature_timeout_s": 5.0,
        "log_flush_interval_s": 0.5,
        "ready_probe_ttl_s": 0.0,
        **overrides,
    }
    return ServingConfig(**values)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> FeatureEnv:
    """A materialized SQLite store shared by the tests of this module (read-only here)."""
    env = build_feature_env(
        tmp_path_factory, "local", recent_config(days=8, n_customers=N_CUSTOMERS)
    )
    materialize(env)
    return env


@pytest.fixture(scope="module")
def two_versions(local_env: FeatureEnv, mlflow_server) -> tuple[str, str, str]:
    """(model name, v1, v2) registered on the real MLflow server; v1 is champion. The service
    loads them with skops and our own trusted types: no MLflow pickle switch is set."""
    name = f"serve-{uuid.uuid4().hex[:8]}"
    v1 = register_model(local_env, mlflow_server.tracking_uri, name, seed=0)
    v2 = register_model(local_env, mlflow_server.tracking_uri, name, seed=1)
    MlflowClient(mlflow_server.tracking_uri).set_registered_model_alias(name, "champion", v1)
    return name, v1, v2


@pytest.fixture
def client_for(local_env, mlflow_server) -> Iterator:
    """Factory: a started TestClient for a model name (lifespan runs; stopped at teardown)."""
    opened: list[TestClient] = []

    def make(model_name: str, config: ServingConfig | None = None, **kw: object) -> TestClient:
        settings = serving_settings(local_env, mlflow_server.tracking_uri, model_name)
        client = TestClient(create_app(settings, config or fast_config(), **kw))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _predict(client: TestClient, instances: list[dict]) -> list[dict]:
    response = client.post("/predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _wait(condition, timeout_s: float = 15.0, what: str = "condition") -> None:
    wait_until(condition, timeout_s=timeout_s, what=what, interval_s=0.1)


def _nonzero_samples(metrics_text: str, sample_name: str) -> dict[str, float]:
    """Samples of `sample_name` above zero, keyed by their labels (the service pre-creates
    every error series at 0 so rate() sees the first error)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == sample_name and sample.value > 0
    }


# --------------------------------------------------------------------------------------------
# Routes, metrics, log
# --------------------------------------------------------------------------------------------


def test_champion_answers_is_ready_counts_and_logs(local_env, two_versions, client_for) -> None:
    name, v1, _ = two_versions
    client = client_for(name)
    instances = random_instances(customers(local_env), 30, np.random.default_rng(3))
    instances[0]["request_id"] = "caller-id-1"

    predictions = _predict(client, instances)

    assert {p["route"] for p in predictions} == {"champion"}
    assert {p["model_version"] for p in predictions} == {v1}
    assert predictions[0]["request_id"] == "caller-id-1"
    assert [p["customer_id"] for p in predictions] == [i["customer_id"] for i in instances]
    scores = np.array([p["score"] for p in predictions])
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores.std() > 0
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["models"] == {"champion": v1}
    metrics = client.get("/metrics").text
    assert (
        f'mlre_serving_predictions_total{{model_version="{v1}",route="champion"}} 30.0' in metrics
    )
    assert "mlre_serving_feature_fetch_seconds_bucket" in metrics
    assert 'mlre_serving_request_latency_seconds_count{model_version="' + v1 in metrics
    _wait(lambda: len(read_predictions(local_env.settings.lake_dir, name)) >= 30, what="log")
    logged = read_predictions(local_env.settings.lake_dir, name)
    assert set(logged["route"]) == {"champion"}
    assert "caller-id-1" in set(logged["request_id"])
    assert logged["amount_to_avg_30d_ratio"].notna().all()  # model features are logged too


def test_a_worker_reads_the_store_once_before_its_first_request(
    two_versions, client_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's first read opens Feast's client: done at start-up, outside any request budget,
    # so the first request does not time out into the fallback (the serving benchmark saw one).
    reads: list[str] = []
    original = FeatureFetcher._read

    def counted(self: FeatureFetcher, plan: ServicePlan, rows: list[dict]) -> Awaitable[Any]:
        reads.append(plan.name)
        return original(self, plan, rows)

    monkeypatch.setattr(FeatureFetcher, "_read", counted)
    name, _, _ = two_versions
    client = client_for(name)

    assert reads == [SERVICE]  # before any request: the champion's feature service
    assert _nonzero_samples(client.get("/metrics").text, "mlre_serving_errors_total") == {}
    assert _predict(client, [{"customer_id": 1001, "amount": 5.0}])[0]["route"] == "champion"


def test_a_failed_warm_up_read_does_not_stop_the_worker(
    two_versions, client_for, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refused(self: FeatureFetcher, plan: ServicePlan, rows: list[dict]) -> Any:
        raise ConnectionRefusedError("store down")

    monkeypatch.setattr(FeatureFetcher, "_read", refused)
    name, _, _ = two_versions
    client = client_for(name)

    assert f"Warm-up read of {SERVICE} failed, serving anyway" in caplog.text
    assert client.get("/healthz").status_code == 200
    assert _predict(client, [{"customer_id": 1001, "amount": 5.0}])[0]["route"] == "fallback"


def test_no_model_yet_starts_ready_degraded_and_answers_with_the_rule(client_for) -> None:
    # Ready (a fresh environment's rollout must complete before any model exists), degraded.
    client = client_for(f"absent-{uuid.uuid4().hex[:8]}")
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["reasons"] == []
    assert "no champion" in ready.json()["degraded"][0]
    predictions = _predict(client, [{"customer_id": 1001, "amount": 500.0}])
    assert predictions[0]["route"] == "fallback"
    assert predictions[0]["model_version"] == "rule"
    assert 0 < predictions[0]["score"] < 1
    assert 'mlre_serving_fallbacks_total{cause="no_model"} 1.0' in client.get("/metrics").text


def test_batch_size_limit_and_bad_instances_are_refused_clearly(two_versions, client_for) -> None:
    client = client_for(two_versions[0], fast_config(max_instances=5))
    too_many = [{"customer_id": 1001, "amount": 1.0}] * 6
    response = client.post("/predict", json={"instances": too_many})
    assert response.status_code == 413
    assert "limit is 5" in response.json()["detail"]
    bad = client.post("/predict", json={"instances": [{"customer_id": "x", "amount": -1}]})
    assert bad.status_code == 422
    assert {e["loc"][-1] for e in bad.json()["detail"]} == {"customer_id", "amount"}
    empty = client.post("/predict", json={"instances": []})
    assert empty.status_code == 422


def test_unloadable_champion_is_answered_by_the_previous_champion(
    two_versions, client_for, mlflow_server, local_env
) -> None:
    name, v1, v2 = two_versions
    client_ml = MlflowClient(mlflow_server.tracking_uri)
    real = mlflow_loader(mlflow_server.tracking_uri, name, local_env.store)

    def load(version: str):
        if version == v2:
            raise OSError("artifact store unreachable")
        return real(version)

    client_ml.set_registered_model_alias(name, "champion", v2)
    client_ml.set_registered_model_alias(name, "previous-champion", v1)
    try:
        client = client_for(name, load=load)
        predictions = _predict(client, [{"customer_id": 1002, "amount": 20.0}])
        assert predictions[0]["route"] == "fallback"
        assert predictions[0]["model_version"] == v1
        ready = client.get("/readyz")  # answering with the previous champion: degraded
        assert ready.status_code == 200
        assert "failed to load" in ready.json()["degraded"][0]
    finally:
        client_ml.set_registered_model_alias(name, "champion", v1)
        client_ml.delete_registered_model_alias(name, "previous-champion")


def test_canary_share_is_sticky_and_alias_moves_reload_under_load(
    local_env, two_versions, client_for, mlflow_server
) -> None:
    name, v1, v2 = two_versions
    ml = MlflowClient(mlflow_server.tracking_uri)
    config = fast_config(max_instances=N_CUSTOMERS)
    client = client_for(name, config)
    keys = customers(local_env)

    ml.set_registered_model_alias(name, "challenger", v2)
    ml.set_registered_model_tag(name, CANARY_SHARE_TAG, "0.3")
    try:
        _wait(lambda: client.get("/readyz").json()["canary_share"] == 0.3, what="canary")
        instances = [{"customer_id": k, "amount": 30.0} for k in keys]
        routed = {p["customer_id"]: p["route"] for p in _predict(client, instances)}
        expected = {k: "canary" if in_canary(k, 0.3) else "champion" for k in keys}
        assert routed == expected
        assert 60 < Counter(routed.values())["canary"] < 180  # about 30 % of 400

        # Alias moves while threads keep sending: every request answered by a real model.
        ml.set_registered_model_tag(name, CANARY_SHARE_TAG, "0")
        ml.delete_registered_model_alias(name, "challenger")
        seen: list[tuple[int, str, str]] = []
        stop = threading.Event()

        def hammer(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                response = client.post(
                    "/predict", json={"instances": random_instances(keys, 5, rng)}
                )
                for p in response.json().get("predictions", [{}]):
                    seen.append((response.status_code, p.get("route"), p.get("model_version")))

        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        ml.set_registered_model_alias(name, "champion", v2)
        _wait(lambda: any(v == v2 and r == "champion" for _, r, v in seen[-50:]), what="v2")
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        ml.set_registered_model_alias(name, "champion", v1)
        ml.set_registered_model_tag(name, CANARY_SHARE_TAG, "0")
    assert {status for status, _, _ in seen} == {200}
    assert {route for _, route, _ in seen} <= {"champion", "canary"}  # no fallback during swap
    versions = [v for _, r, v in seen if r == "champion"]
    assert versions[0] == v1
    assert versions[-1] == v2
    assert _nonzero_samples(client.get("/metrics").text, "mlre_serving_errors_total") == {}


# --------------------------------------------------------------------------------------------
# Redis outage
# --------------------------------------------------------------------------------------------


def test_redis_outage_switches_to_fallback_without_5xx(
    tmp_path_factory, request, mlflow_server, redis_server, two_versions
) -> None:
    name, _, _ = two_versions
    env = build_feature_env(
        tmp_path_factory, "production", recent_config(days=8, n_customers=N_CUSTOMERS), request
    )
    materialize(env)
    settings = serving_settings(env, mlflow_server.tracking_uri, name)
    config = fast_config(feature_timeout_s=0.5)
    keys = customers(env)
    results: list[tuple[int, str]] = []
    stop = threading.Event()
    with TestClient(create_app(settings, config)) as client:
        assert client.get("/readyz").status_code == 200

        def traffic() -> None:
            rng = np.random.default_rng(7)
            while not stop.is_set():
                response = client.post(
                    "/predict", json={"instances": random_instances(keys, 3, rng)}
                )
                routes = [p["route"] for p in response.json().get("predictions", [])]
                results.extend((response.status_code, r) for r in routes or ["none"])
                time.sleep(0.005)

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            _wait(lambda: len(results) > 30, what="traffic before the outage")
            redis_server.kill()
            before = len(results)
            _wait(lambda: sum(r == "fallback" for _, r in results[before:]) > 30, what="fallback")
            _wait(lambda: _breaker_open(client), what="the breaker to open")
            # Still ready: every replica shares the store, and the fallback answers.
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert "feature store unreachable" in ready.json()["degraded"][-1]
            redis_server.restart()
            after = len(results)
            _wait(lambda: any(r == "champion" for _, r in results[after:]), what="recovery")
        finally:
            stop.set()
            thread.join()
        metrics = client.get("/metrics").text
    assert {status for status, _ in results} == {200}  # never a 5xx for a store outage
    assert {r for _, r in results} == {"champion", "fallback"}
    assert 'mlre_serving_fallbacks_total{cause="circuit_open"}' in metrics
    assert "mlre_serving_feature_store_circuit_open 0.0" in metrics  # closed again


def _breaker_open(client: TestClient) -> bool:
    return "mlre_serving_feature_store_circuit_open 1.0" in client.get("/metrics").text


# --------------------------------------------------------------------------------------------
# Real process: SIGTERM loses nothing
# --------------------------------------------------------------------------------------------


def test_sigterm_flushes_every_prediction(local_env, two_versions, mlflow_server, tmp_path) -> None:
    name, v1, _ = two_versions
    env = serving_env(local_env.settings, mlflow_server.tracking_uri, name, **HOLD_THE_LOG)
    lake = Path(local_env.settings.lake_dir)
    before = len(read_predictions(lake, name))
    started = pd.Timestamp.now(tz="UTC")
    with serving_process(env, tmp_path / "serving.out") as service:
        service.wait_ready()
        rng = np.random.default_rng(11)
        n = 0
        with httpx.Client(base_url=service.url, timeout=5) as http:
            for _ in range(40):
                batch = random_instances(customers(local_env), 3, rng)
                response = http.post("/predict", json={"instances": batch})
                assert response.status_code == 200
                n += len(batch)
        assert len(read_predictions(lake, name)) == before  # still all in memory
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why.
        assert service.stop(timeout_s=30) in {0, -signal.SIGTERM}
        output = service.output()
        assert "120 prediction rows written in total, 0 left" in output, output[-2000:]
    logged = read_predictions(lake, name)
    assert len(logged) - before == n == 120
    assert set(logged.loc[logged["predicted_at"] >= started, "model_version"]) == {v1}

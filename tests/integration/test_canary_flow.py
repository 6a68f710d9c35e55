"""The canary-rollout flow against a real service (uvicorn in a thread), MLflow and Prefect."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from mlflow import MlflowClient

from flows.canary import CanaryParams, canary_rollout
from mlre import registry
from mlre.canary import CANARY_ROLLBACK_ACTION, CANARY_SHARE_TAG, CanaryThresholds
from mlre.settings import get_settings
from mlre.supervisor import free_port
from mlre.waiting import wait_until
from serving.app import create_app
from tests.integration.test_serving import (
    customers,
    fast_config,
    local_env,  # noqa: F401  (module fixture reused)
    random_instances,
    register_model,
    serving_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@contextmanager
def running_service(settings, config) -> Iterator[str]:
    """The real app under uvicorn on a free port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, config), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout_s=30, what=f"the service at {base} ready", interval_s=0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def traffic(base: str, keys: list[int]) -> Iterator[list[int]]:
    """Batches of random instances in a thread until the block ends; yields status codes."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        rng = np.random.default_rng(5)
        with httpx.Client(base_url=base, timeout=10) as http:
            while not stop.is_set():
                response = http.post(
                    "/predict", json={"instances": random_instances(keys, 40, rng)}
                )
                statuses.append(response.status_code)
                time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def rollout(local_env, mlflow_server, prefect_harness, monkeypatch):  # noqa: F811
    """A fresh model name with champion v1, settings the flow reads, and a running service."""
    name = f"canary-{uuid.uuid4().hex[:8]}"
    uri = mlflow_server.tracking_uri
    v1 = register_model(local_env, uri, name, seed=0)
    MlflowClient(uri).set_registered_model_alias(name, registry.CHAMPION, v1)
    monkeypatch.setenv("MLRE_HOME", str(local_env.settings.home))
    monkeypatch.setenv("MLRE_MLFLOW_URI", uri)
    monkeypatch.setenv("MLRE_MODEL_NAME", name)
    get_settings.cache_clear()
    yield local_env, MlflowClient(uri), name, v1
    get_settings.cache_clear()


def _params(base: str, version: str) -> CanaryParams:
    return CanaryParams(
        version=version,
        steps=[0.25, 0.5],
        metrics_url=f"{base}/metrics",
        min_predictions=300,
        step_timeout_s=60,
        switch_timeout_s=20,
        poll_s=0.3,
        thresholds=CanaryThresholds(max_latency_p99_ms=1000),
    )


def test_healthy_challenger_is_promoted_after_every_step(rollout, mlflow_server) -> None:
    env, client, name, v1 = rollout
    v2 = register_model(env, mlflow_server.tracking_uri, name, seed=1)
    settings = serving_settings(env, mlflow_server.tracking_uri, name)
    with running_service(settings, fast_config()) as base, traffic(base, customers(env)) as codes:
        result = canary_rollout(_params(base, v2))
    assert result.outcome == "promoted", result.reason
    assert [d["share"] for d in result.decisions] == [0.25, 0.5]
    assert all(d["healthy"] for d in result.decisions)
    assert all(d["psi"] < 0.2 for d in result.decisions)
    model = client.get_registered_model(name)
    assert model.aliases == {registry.CHAMPION: v2, registry.PREVIOUS_CHAMPION: v1}
    assert model.tags[CANARY_SHARE_TAG] == "0"
    assert registry.history(client, name)[-1].action == "promote"
    assert set(codes) == {200}


def test_shifted_challenger_is_rolled_back_at_the_first_step(rollout, mlflow_server) -> None:
    env, client, name, v1 = rollout
    bad = register_model(env, mlflow_server.tracking_uri, name, seed=1, shift=3.0)
    settings = serving_settings(env, mlflow_server.tracking_uri, name)
    with running_service(settings, fast_config()) as base, traffic(base, customers(env)) as codes:
        result = canary_rollout(_params(base, bad))
        # The service stops routing to the canary without a restart.
        wait_until(
            lambda: httpx.get(f"{base}/readyz").json()["canary_share"] == 0,
            timeout_s=10,
            what="the service routing no traffic to the canary",
            interval_s=0.2,
        )
        assert httpx.get(f"{base}/readyz").json()["models"] == {"champion": v1}
    assert result.outcome == "rolled_back"
    assert len(result.decisions) == 1  # the first step caught it
    assert "PSI" in result.reason
    assert result.decisions[0]["psi"] > 0.2
    model = client.get_registered_model(name)
    assert model.aliases == {registry.CHAMPION: v1}  # challenger removed, champion untouched
    assert model.tags[CANARY_SHARE_TAG] == "0"
    tags = client.get_model_version(name, bad).tags
    assert tags[registry.ROLLED_BACK_TAG] == "true"
    assert "PSI" in tags[registry.ROLLED_BACK_REASON_TAG]
    last = registry.history(client, name)[-1]
    assert last.action == CANARY_ROLLBACK_ACTION
    assert last.to_version == bad
    assert set(codes) == {200}

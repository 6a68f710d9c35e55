"""`python -m serving` with MLRE_SERVING_WORKERS=2: uvicorn's supervisor and two worker processes
on one port, against the real Feast store and MLflow server of test_serving.

One process for the whole story (it ends with SIGTERM): both workers answer, /metrics sums
their counters, an alias move reaches each of them, and shutdown loses no logged prediction.
"""

from __future__ import annotations

import contextlib
import re
import signal
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from mlre.canary import worker_states
from mlre.prediction_log import predictions_dir, read_predictions
from mlre.waiting import wait_until
from serving.__main__ import metrics_dir
from tests.integration.test_serving import (
    customers,
    local_env,  # noqa: F401  (module fixture reused)
    random_instances,
    two_versions,  # noqa: F401  (module fixture reused)
)
from tests.support.serving_process import HOLD_THE_LOG, serving_env, serving_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

WORKERS = 2
PIN_TIMEOUT_S = 120.0  # the second worker imports and loads its model while the first serves
SWITCH_TIMEOUT_S = 60.0
PENDING = "mlre_serving_log_pending_rows"
STOPPED = re.compile(r"(\d+) prediction rows written in total, (\d+) left unwritten")


def _ready(http: httpx.Client) -> dict:
    """/readyz of the worker behind this client's connection ({} while it is not ready)."""
    response = http.get("/readyz")
    return response.json() if response.status_code == 200 else {}


def _worker(http: httpx.Client) -> int | None:
    """The pid of the worker behind this client's connection; None while it is not ready."""
    return _ready(http).get("worker")


def _pin_workers(url: str, stack: contextlib.ExitStack) -> dict[int, httpx.Client]:
    """One keep-alive connection per worker: new connections until every worker has answered
    one (each new connection goes to whichever worker accepts it first)."""
    pinned: dict[int, httpx.Client] = {}

    def every_worker_pinned() -> bool:
        for pid, http in list(pinned.items()):  # busy, so uvicorn's keep-alive never drops it
            if _worker(http) != pid:
                pinned.pop(pid).close()
        http = httpx.Client(base_url=url, timeout=30)
        pid = _worker(http)
        if pid is None or pid in pinned:
            http.close()
        else:
            pinned[pid] = http
            stack.callback(http.close)
        return len(pinned) == WORKERS

    wait_until(every_worker_pinned, timeout_s=PIN_TIMEOUT_S, what="both workers", interval_s=0.05)
    return pinned


def _predict_one_by_one(http: httpx.Client, instances: list[dict]) -> list[dict]:
    """One request per instance (so requests == predictions), each with its own request_id."""
    answered = []
    for instance in instances:
        body = {"instances": [{**instance, "request_id": uuid.uuid4().hex}]}
        response = http.post("/predict", json=body)
        assert response.status_code == 200, response.text
        answered += response.json()["predictions"]
    return answered


def _summed(metrics_text: str, sample_name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == sample_name
    )


def _rows_by_worker(lake: Path, model_name: str, pids: list[int]) -> dict[int, int]:
    """Logged rows per worker, from the pid in the name of each file it wrote."""
    folder = Path(predictions_dir(lake, model_name))
    return {
        pid: sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob(f"*-online-{pid}-*"))
        for pid in pids
    }


def _every_worker_serves(url: str, pinned: dict[int, httpx.Client], version: str) -> bool:
    """Every worker says it serves `version` as champion: through its pinned connection, and
    in /metrics (one `pid` series per live worker)."""
    ready = {pid: _ready(http) for pid, http in pinned.items()}
    assert {pid: body.get("worker") for pid, body in ready.items()} == {p: p for p in ready}
    metrics = httpx.get(f"{url}/metrics").text
    return all(body["models"] == {"champion": version} for body in ready.values()) and (
        worker_states(metrics) == {str(pid): (0.0, {"champion": version}) for pid in pinned}
    )


def _assert_logged_once_each(lake: Path, model_name: str, answered: dict[int, list[dict]]) -> None:
    """The prediction log holds one row per answered prediction, none twice, each in the files
    of the worker that answered it."""
    sent = [p["request_id"] for predictions in answered.values() for p in predictions]
    logged = read_predictions(lake, model_name)
    assert len(logged) == len(sent)
    assert not [i for i, count in Counter(logged["request_id"]).items() if count > 1]
    assert set(logged["request_id"]) == set(sent)
    by_worker = _rows_by_worker(lake, model_name, list(answered))
    assert by_worker == {pid: len(predictions) for pid, predictions in answered.items()}


def test_two_workers_share_the_port_the_metrics_the_models_and_a_clean_shutdown(
    local_env,  # noqa: F811
    two_versions,  # noqa: F811
    mlflow_server,
    tmp_path: Path,
) -> None:
    name, v1, v2 = two_versions
    settings = local_env.settings
    env = serving_env(
        settings,
        mlflow_server.tracking_uri,
        name,
        MLRE_SERVING_WORKERS=str(WORKERS),
        MLRE_SERVING_POLL_INTERVAL_S="0.2",
        **HOLD_THE_LOG,
    )
    lake = Path(settings.lake_dir)
    rng = np.random.default_rng(5)
    keys = customers(local_env)
    answered: dict[int, list[dict]] = {}  # worker pid -> the predictions it answered

    with serving_process(env, tmp_path / "serving.out") as service, contextlib.ExitStack() as stack:
        service.wait_ready()
        shared = metrics_dir(settings.run_dir, service.proc.pid)

        # a. Both workers answer: two distinct pids, both children of the supervisor.
        pinned = _pin_workers(service.url, stack)
        children = {child.pid for child in psutil.Process(service.proc.pid).children()}
        assert set(pinned) <= children, (pinned, children)

        # b. /metrics sums every worker's counters: N requests of one instance, N predictions.
        for pid, http in pinned.items():
            answered[pid] = _predict_one_by_one(http, random_instances(keys, 12, rng))
            assert _worker(http) == pid, "the connection moved to another worker"
        n = sum(len(predictions) for predictions in answered.values())
        metrics = httpx.get(f"{service.url}/metrics").text
        assert _summed(metrics, "mlre_serving_predictions_total") == n == 24
        assert _summed(metrics, "mlre_serving_request_latency_seconds_count") == n
        families = list(text_string_to_metric_families(metrics))
        assert all(family.name.startswith("mlre_serving_") for family in families)  # no Feast's
        assert {f"counter_{pid}.db" for pid in pinned} <= {p.name for p in shared.iterdir()}
        every_worker_on = {str(pid): (0.0, {"champion": v1}) for pid in pinned}
        assert worker_states(metrics) == every_worker_on

        # c. The champion alias move reaches every live worker.
        MlflowClient(mlflow_server.tracking_uri).set_registered_model_alias(name, "champion", v2)

        wait_until(
            lambda: _every_worker_serves(service.url, pinned, v2),
            timeout_s=SWITCH_TIMEOUT_S,
            what="alias move",
            interval_s=0.2,
        )
        for pid, http in pinned.items():
            moved = _predict_one_by_one(http, random_instances(keys, 3, rng))
            assert {p["model_version"] for p in moved} == {v2}
            assert _worker(http) == pid, "the connection moved to another worker"
            answered[pid] += moved
        assert read_predictions(lake, name).empty  # every row still in the workers' memory
        held = sum(len(predictions) for predictions in answered.values())
        wait_until(  # each worker refreshes its own share of the sum
            lambda: _summed(httpx.get(f"{service.url}/metrics").text, PENDING) == held,
            timeout_s=SWITCH_TIMEOUT_S,
            what="pending log rows of every worker",
            interval_s=0.2,
        )

        # d. SIGTERM to the supervisor: every worker drains and flushes, nothing is lost.
        stack.close()
        assert service.stop() in {0, -signal.SIGTERM}
        output = service.output()
        stopped = [(int(w), int(left)) for w, left in STOPPED.findall(output)]
        assert len(stopped) == WORKERS, output[-3000:]
        assert all(left == 0 for _, left in stopped), stopped
        assert not shared.exists()  # the supervisor removed its metrics directory

    _assert_logged_once_each(lake, name, answered)
    assert sum(written for written, _ in stopped) == sum(map(len, answered.values()))

"""`mlre demo` twice, as a user runs it: the pipeline deployment through a local worker, a
promoted champion, a gated decision against it, and what the Prefect and MLflow UIs show."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.e2e.conftest import PrivatePlatform
from tests.support.browser import rendered_dom

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
SMALL = ("--customers", "1500", "--days", "16")
SUBFLOWS = ("feature-pipeline", "train-model", "evaluate-model", "promote-model", "batch-inference")
ARTIFACTS = ("training-data", "promotion-gate", "metrics-vs-champion", "batch-inference")


def _api(plat: PrivatePlatform, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{plat.prefect_port}/api/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _scheduled_runs(plat: PrivatePlatform, flow: str, deployment: str) -> int:
    deployments = _api(
        plat,
        "deployments/filter",
        {"deployments": {"name": {"any_": [deployment]}}, "flows": {"name": {"any_": [flow]}}},
    )
    runs = _api(
        plat,
        "flow_runs/filter",
        {
            "deployments": {"id": {"any_": [d["id"] for d in deployments]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        },
    )
    return len(runs)


def _artifact_keys(plat: PrivatePlatform) -> set[str]:
    body = {"artifacts": {"key": {"any_": list(ARTIFACTS)}}}
    return {artifact["key"] for artifact in _api(plat, "artifacts/filter", body)}


def _automation_names(plat: PrivatePlatform) -> list[str]:
    return [a["name"] for a in _api(plat, "automations/filter", {})]


def _run(plat: PrivatePlatform, *args: str) -> str:
    result = plat.mlre(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:] + _worker_log_tail(plat)
    return output


def _worker_log_tail(plat: PrivatePlatform) -> str:
    """The end of the worker's log, where a failed flow run's traceback is (the home is gone
    once the test ends)."""
    path = plat.home / "logs" / "worker-local.log"
    tail = path.read_text(errors="replace")[-6000:] if path.exists() else "(no worker log)"
    return f"\n--- {path.name} (tail) ---\n{tail}"


def test_demo_runs_the_pipeline_deployment_and_the_uis_show_it(
    private_platform: PrivatePlatform,
) -> None:
    plat = private_platform
    first = _run(plat, "demo", *SMALL)
    assert "work pool 'local': created" in first
    assert "ml-pipeline/weekly" in first
    assert "worker: started" in first
    assert "version 1: PROMOTED to champion" in first
    assert "judged against champion: (none: first model)" in first
    assert f"http://127.0.0.1:{plat.mlflow_port}/#/models/fraud-detector" in first
    for subflow in SUBFLOWS:
        assert f"finished {subflow}: completed" in first
    assert _scheduled_runs(plat, "materialize-features", "hourly") > 0  # schedules are live
    assert "mlre-retrain-fraud-detector" in _automation_names(plat)  # created by `mlre deploy`

    second = _run(plat, "demo", *SMALL)
    assert "worker: already running" in second
    # Pinned: the second run reuses the landed sources (no --regenerate) and the deployment's
    # training parameters (same seed), so version 2 is trained like version 1 and scores exactly
    # as well; it loses nothing against the champion, and the gate promotes it.
    assert "model fraud-detector version 2: PROMOTED to champion" in second
    assert "judged against champion: 1" in second
    assert "champion now: version 2" in second
    assert "REFUSED" not in second
    run_url = re.search(r"Prefect UI \(this run.*?\): (\S+)", second).group(1)

    run_page = rendered_dom(run_url)
    assert "Completed" in run_page
    assert "ml-pipeline" in run_page
    runs_page = rendered_dom(f"http://127.0.0.1:{plat.prefect_port}/runs")
    assert all(subflow in runs_page for subflow in SUBFLOWS)
    # Every artifact of the pipeline exists; the UI renders one's page. (The artifacts list
    # shows only the newest keys, and two demo runs make more than fit on it.)
    assert set(ARTIFACTS) <= _artifact_keys(plat)
    gate_page = rendered_dom(f"http://127.0.0.1:{plat.prefect_port}/artifacts/key/promotion-gate")
    assert "promotion-gate" in gate_page
    model_page = rendered_dom(f"http://127.0.0.1:{plat.mlflow_port}/#/models/fraud-detector")
    assert "champion" in model_page
    assert "audit.000001" in model_page

    assert "promote  -     1" in _run(plat, "history")
    _run(plat, "down")
    assert not list((plat.home / "run").glob("*.pid"))  # worker and servers all stopped

"""The feature pipeline as a user runs it: `mlre up`, generate, materialize, check, `mlre down`."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.e2e.conftest import PrivatePlatform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _flow_runs(plat: PrivatePlatform) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{plat.prefect_port}/api/flow_runs/filter",
        data=json.dumps({"limit": 50}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _check(result, *expected: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for text in expected:
        assert text in output, output[-3000:]
    return output


def test_feature_pipeline_through_the_local_servers(private_platform: PrivatePlatform) -> None:
    plat = private_platform
    _check(plat.mlre("up"), "prefect", "mlflow")
    _check(plat.mlre("generate", "--customers", "300", "--days", "5"), "customer_daily_stats")
    _check(plat.mlre("materialize", "--partitions", "2"), "customer_daily_stats_fv partition 1")
    _check(plat.mlre("check-consistency", "--sample-size", "300"), "consistent: mismatch rate")

    runs = {run["name"]: run for run in _flow_runs(plat)}
    by_flow = {run["state_type"] for run in runs.values()}
    assert by_flow == {"COMPLETED"}
    assert len(runs) == 2  # one materialize-features run and one consistency run

    again = _check(plat.mlre("materialize"), "partition 0: 0 keys")  # incremental: nothing new
    assert "error" not in again.lower()
    _check(plat.mlre("down"), "stopped")
    assert not list((plat.home / "run").glob("*.pid"))

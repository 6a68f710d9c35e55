"""The local monitoring stack with real processes on 127.0.0.1: Debian's Prometheus,
Alertmanager and Pushgateway started the way `mlre up` starts them, the flows pushing their SLIs
to the Pushgateway, Prometheus scraping them and the prediction service (`python -m serving`).

Helpers here (the stack, a served prediction service, Prometheus queries) are shared with the
SLO drill (test_slo_drill.py).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.materialize import MaterializeParams, materialize_features
from flows.slo_report import SloReportParams, slo_report
from mlre import local_platform, monitoring_config, supervisor
from mlre.monitoring_config import DRILL, MonitoringSetup
from mlre.prometheus_api import Sample, instant_query
from mlre.settings import PROJECT_ROOT, Settings, get_settings
from mlre.slo import load_specs
from mlre.slo.outputs import LOCAL_RULES_FILE
from mlre.supervisor import free_port
from mlre.waiting import wait_until
from tests.integration.conftest import FeatureEnv, recent_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

VIEW = "customer_daily_stats_fv"
SERIES_TIMEOUT_S = 90.0  # a push or scrape shows in ~1 s; the rest is a loaded 2-core machine
SERVICE_READY_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """A running monitoring stack and the port a prediction service is scraped on."""

    settings: Settings
    serving_port: int

    def query(self, promql: str) -> list[Sample]:
        return instant_query(self.settings.prometheus_endpoint, promql, timeout_s=10)

    def wait_for(self, promql: str, what: str, timeout_s: float = SERIES_TIMEOUT_S) -> list[Sample]:
        """Query until the result is not empty (the series, or a filter that now holds)."""
        return wait_until(
            lambda: self.query(promql), timeout_s=timeout_s, what=what, interval_s=0.25
        )


def require_monitoring_binaries() -> None:
    """Fail (never skip) naming the packages when Debian's servers are missing."""
    missing = [
        name for name in monitoring_config.EXECUTABLES.values() if shutil.which(name) is None
    ]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: `sudo {monitoring_config.INSTALL_HINT}` "
            "(`make monitoring` installs them when run as root)."
        )


@contextmanager
def monitoring_stack(
    home: Path,
    *,
    serving_port: int | None = None,
    rule_files: tuple[Path, ...] = (),
    webhook_url: str = "",
) -> Iterator[Stack]:
    """Prometheus, Alertmanager and Pushgateway on free ports in `home`, through the same code
    path as `mlre up` (drill timing: 1 s scrapes and evaluations), scraping a prediction service
    on `serving_port` (default: a free one); stopped by PID afterwards."""
    require_monitoring_binaries()
    serving_port = serving_port or free_port()
    settings = Settings(
        home=home,
        prometheus_port=free_port(),
        alertmanager_port=free_port(),
        pushgateway_port=free_port(),
        monitoring=True,
        prometheus_url="",
        alertmanager_url="",
        pushgateway_url="",
        alert_webhook_url=webhook_url,
        health_timeout_s=60,
    )
    setup = MonitoringSetup(
        timing=DRILL, rule_files=rule_files, serving_targets=(f"127.0.0.1:{serving_port}",)
    )
    try:
        rows = local_platform.up(
            settings, only=local_platform.MONITORING_SERVICES, monitoring=setup
        )
        assert {r.name: r.health for r in rows if r.name in local_platform.MONITORING_SERVICES} == {
            "pushgateway": "healthy",
            "alertmanager": "healthy",
            "prometheus": "healthy",
        }
        yield Stack(settings, serving_port)
    finally:
        local_platform.down(settings)


@contextmanager
def served(env: Mapping[str, str], port: int, log_path: Path) -> Iterator[str]:
    """`python -m serving` on 127.0.0.1:`port` with `env`, ready; its base URL. Stopped by PID
    (SIGTERM: it flushes its prediction log), whatever happened."""
    proc = supervisor.spawn(
        [sys.executable, "-m", "serving"],
        log_path=log_path,
        env={**os.environ, **env, "MLRE_SERVING_PORT": str(port)},
        cwd=PROJECT_ROOT,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        supervisor.wait_healthy(
            "the prediction service",
            ready,
            alive=lambda: proc.poll() is None,
            timeout_s=SERVICE_READY_TIMEOUT_S,
            log_path=log_path,
            interval_s=0.2,
        )
        yield base
    finally:
        supervisor.stop_popen(proc, 30)  # SIGTERM first: the service flushes its log


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    rules = (PROJECT_ROOT / LOCAL_RULES_FILE,)  # the committed SLO rules, real time scale
    with monitoring_stack(tmp_path_factory.mktemp("monitoring-home"), rule_files=rules) as running:
        yield running


@pytest.fixture
def flow_env(
    make_feature_env, stack: Stack, monkeypatch: pytest.MonkeyPatch, prefect_harness
) -> Iterator[FeatureEnv]:
    """A fresh local store whose settings, Pushgateway included, the flows read."""
    env = make_feature_env("local", config=recent_config())
    monkeypatch.setenv("MLRE_HOME", str(env.settings.home))
    monkeypatch.setenv("MLRE_STORE_PROFILE", "local")
    monkeypatch.setenv("MLRE_PUSHGATEWAY_URL", stack.settings.pushgateway_endpoint)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_stack_is_up_with_generated_config_and_status_rows(stack: Stack) -> None:
    rows = {row.name: row for row in local_platform.status(stack.settings)}
    for name in local_platform.MONITORING_SERVICES:
        assert rows[name].health == "healthy", name
        assert rows[name].pid is not None
    targets = stack.wait_for('up{job="mlre-pushgateway"} == 1', "Prometheus scraping the gateway")
    assert targets[0].labels["instance"] == f"127.0.0.1:{stack.settings.pushgateway_port}"
    config = (stack.settings.monitoring_dir / "prometheus.yml").read_text()
    assert "mlre-serving" in config
    assert f"127.0.0.1:{stack.settings.alertmanager_port}" in config


def test_flows_push_their_slis_and_prometheus_shows_them(stack: Stack, flow_env) -> None:
    state = materialize_features(MaterializeParams(partitions=2), return_state=True)
    assert state.is_completed(), state.message
    newest = max(r.max_event_timestamp for r in state.result() if r.feature_view == VIEW)
    check = validate_feature_consistency(
        ConsistencyParams(feature_views=[VIEW], sample_size=100), return_state=True
    )
    assert check.is_completed(), check.message

    view = f'job="mlre-flows",flow="materialize-features",feature_view="{VIEW}"'
    success = stack.wait_for(f"mlre_materialization_success{{{view}}} == 1", "success SLI")
    assert len(success) == 1
    (fresh,) = stack.wait_for(f"mlre_feature_newest_event_timestamp_seconds{{{view}}}", "freshness")
    assert fresh.value == pytest.approx(newest.timestamp())
    (mismatch,) = stack.wait_for(
        f'mlre_feature_mismatch_ratio{{feature_view="{VIEW}"}}', "mismatch SLI"
    )
    assert mismatch.value == 0.0
    assert mismatch.labels["flow"] == "validate-feature-consistency"
    for flow in ("materialize-features", "validate-feature-consistency"):
        (run,) = stack.wait_for(
            f'mlre_flow_run_success{{job="mlre-flows",flow="{flow}"}} == 1', f"{flow} run SLI"
        )
        assert run.labels.get("deployment", "") == ""  # a direct call, not a deployment
        stack.wait_for(
            f'mlre_flow_run_finished_timestamp_seconds{{flow="{flow}"}}', f"{flow} finish time"
        )

    # A re-run replaces its group: still one series per view, freshness kept (nothing new).
    again = materialize_features(MaterializeParams(partitions=2), return_state=True)
    assert again.is_completed(), again.message
    groups = _gateway_groups(stack, "mlre_materialization_success")
    assert [g for g in groups if g.get("feature_view") == VIEW] == [
        {"job": "mlre-flows", "flow": "materialize-features", "feature_view": VIEW}
    ]
    assert len(stack.query(f"mlre_materialization_success{{{view}}}")) == 1
    (kept,) = stack.query(f"mlre_feature_newest_event_timestamp_seconds{{{view}}}")
    assert kept.value == pytest.approx(newest.timestamp())


def test_a_failed_flow_pushes_zero(stack: Stack, flow_env) -> None:
    missing = f"no_such_fv_{uuid.uuid4().hex[:6]}"
    state = materialize_features(MaterializeParams(feature_views=[missing]), return_state=True)
    assert state.is_failed()

    stack.wait_for(
        f'mlre_materialization_success{{feature_view="{missing}"}} == 0', "failed view SLI"
    )
    stack.wait_for(
        'mlre_flow_run_success{flow="materialize-features",deployment=""} == 0',
        "the failed run's SLI",
    )


def test_pushgateway_down_never_fails_a_flow(flow_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRE_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    from mlre import slis

    failed = slis.push_counts().get("failed", 0)
    state = materialize_features(MaterializeParams(partitions=1), return_state=True)
    assert state.is_completed(), state.message
    # The view's SLIs and the run's own (its state hook) were attempted and counted.
    assert slis.push_counts()["failed"] >= failed + 2


def test_prediction_service_is_scraped(
    stack: Stack, make_feature_env, mlflow_server, tmp_path: Path
) -> None:
    env = make_feature_env("local", config=recent_config())
    service_env = {
        "MLRE_HOME": str(env.settings.home),
        "MLRE_STORE_PROFILE": "local",
        "MLRE_MLFLOW_URI": mlflow_server.tracking_uri,
        # No such model: the service answers with its rule (route fallback) until one exists.
        "MLRE_MODEL_NAME": f"scraped-{uuid.uuid4().hex[:8]}",
    }
    with served(service_env, stack.serving_port, tmp_path / "serving.log") as base:
        for i in range(5):
            response = httpx.post(
                f"{base}/predict",
                json={"instances": [{"customer_id": 1000 + i, "amount": 20.0}]},
                timeout=10,
            )
            assert response.status_code == 200, response.text
        stack.wait_for('up{job="mlre-serving"} == 1', "Prometheus scraping the service")
        (answered,) = stack.wait_for(
            'sum(mlre_serving_predictions_total{job="mlre-serving"}) >= 5', "predictions scraped"
        )
        assert answered.value >= 5
        # The availability and latency SLIs' inputs: answers by route, latency by bucket.
        routes = stack.query('sum by (route) (mlre_serving_predictions_total{job="mlre-serving"})')
        assert {s.labels["route"] for s in routes} == {"fallback"}
        buckets = stack.query('mlre_serving_request_latency_seconds_bucket{job="mlre-serving"}')
        assert {s.labels["le"] for s in buckets} >= {"0.05", "0.1", "0.25", "+Inf"}


def _gateway_groups(stack: Stack, metric: str) -> list[dict[str, str]]:
    """The Pushgateway's own view: the grouping labels of every group holding `metric`."""
    body = httpx.get(f"{stack.settings.pushgateway_endpoint}/api/v1/metrics", timeout=10).json()
    return [group["labels"] for group in body["data"] if metric in group]


def test_slo_report_reads_every_budget_from_prometheus(stack: Stack, flow_env) -> None:
    written = materialize_features(MaterializeParams(partitions=2), return_state=True)
    assert written.is_completed(), written.message
    check = validate_feature_consistency(
        ConsistencyParams(feature_views=[VIEW], sample_size=100), return_state=True
    )
    assert check.is_completed(), check.message
    consistency = 'sloth_id="features-consistency"'
    stack.wait_for(f"slo:sli_error:ratio_rate1h{{{consistency}}}", "the consistency SLI recorded")

    state = slo_report(SloReportParams(prometheus_url=stack.settings.prometheus_endpoint),
                       return_state=True)  # fmt: skip
    assert state.is_completed(), state.message
    rows = {s.slo_id: s for s in state.result()}
    specs = load_specs(PROJECT_ROOT / "slos")
    assert set(rows) == {spec.id for spec in specs}  # every SLO has a row, cloud-only ones too
    assert rows["features-consistency"].objective == pytest.approx(0.99)
    assert rows["features-consistency"].sli == 1.0  # 0 mismatches pushed by the flow
    assert rows["features-consistency"].verdict == "ok"
    # No test here pushes the model's SLIs (the service test's scrapes may or may not span its
    # requests, so serving's rows are not checked): an SLI never seen is "no data", never "ok".
    assert rows["model-quality"].verdict == "no data"
    assert rows["model-drift"].verdict == "no data"
    assert rows["gpu-pools-idle"].objective is None  # its rules are not in the local file

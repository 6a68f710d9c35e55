"""The SLI push helper (mlre.slis) and the flows' state hook (flows.slis): series names and
groups as the contract says, a push that never raises, and Prefect's state turned into 1/0."""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Crashed, Failed
from prometheus_client.exposition import generate_latest

from flows import slis as flow_slis
from mlre import slis
from mlre.supervisor import free_port

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 3, 18, 9, 30, tzinfo=UTC)


@pytest.fixture
def silent_gateway() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung Pushgateway)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def _sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Record what push_to_gateway / pushadd_to_gateway were called with, sending nothing."""
    calls: list[tuple[str, dict]] = []

    def recorder(method: str):
        def send(gateway: str, **kwargs) -> None:
            calls.append((method, {"gateway": gateway, **kwargs}))

        return send

    monkeypatch.setattr(slis, "push_to_gateway", recorder("put"))
    monkeypatch.setattr(slis, "pushadd_to_gateway", recorder("post"))
    return calls


# ---- the series and their groups -------------------------------------------------------------


def test_materialization_groups_by_flow_and_view() -> None:
    push = slis.materialization(
        "materialize-features", "daily_fv", succeeded=True, newest_event=WHEN
    )
    assert push.grouping == {"flow": "materialize-features", "feature_view": "daily_fv"}
    assert push.job == "mlre-flows"
    assert push.replace  # the whole group is replaced: a re-run adds no series
    assert {s.name: s.value for s in push.samples} == {
        "mlre_materialization_success": 1.0,
        "mlre_feature_newest_event_timestamp_seconds": WHEN.timestamp(),
    }
    assert all(s.labels == {"feature_view": "daily_fv"} for s in push.samples)


def test_a_failed_materialization_keeps_the_last_known_freshness() -> None:
    push = slis.materialization(
        "materialize-features", "daily_fv", succeeded=False, newest_event=None
    )
    assert [(s.name, s.value) for s in push.samples] == [("mlre_materialization_success", 0.0)]
    assert not push.replace  # POST: the group's freshness gauge stays as last pushed


def test_model_groups_leave_the_version_out_so_a_new_champion_replaces_the_old() -> None:
    drift = slis.drift("check-drift", "fraud", "7", share=0.25, threshold=0.5)
    quality = slis.quality("monitor-performance", "fraud", "7", auc=0.81, baseline_auc=0.84)
    assert drift.grouping == {"flow": "check-drift", "model": "fraud"}
    assert quality.grouping == {"flow": "monitor-performance", "model": "fraud"}
    assert {s.name: s.value for s in drift.samples} == {
        "mlre_model_drift_share": 0.25,
        "mlre_model_drift_threshold": 0.5,
    }
    assert {s.name: s.value for s in quality.samples} == {
        "mlre_model_quality_auc": 0.81,
        "mlre_model_quality_baseline_auc": 0.84,
    }
    for sample in (*drift.samples, *quality.samples):
        assert sample.labels == {"model": "fraud", "version": "7"}


def test_flow_runs_group_by_flow_and_deployment() -> None:
    push = slis.flow_run("check-drift", "daily", succeeded=False, finished=WHEN)
    assert push.grouping == {"flow": "check-drift", "deployment": "daily"}
    assert {s.name: s.value for s in push.samples} == {
        "mlre_flow_run_success": 0.0,
        "mlre_flow_run_finished_timestamp_seconds": WHEN.timestamp(),
    }


def test_mismatch_ratio_is_nan_when_nothing_was_compared() -> None:
    assert slis.ratio(3, 200) == 0.015
    assert math.isnan(slis.ratio(0, 0))
    push = slis.mismatch("validate-feature-consistency", "daily_fv", slis.ratio(0, 0))
    assert push.grouping == {"flow": "validate-feature-consistency", "feature_view": "daily_fv"}
    assert [s.name for s in push.samples] == ["mlre_feature_mismatch_ratio"]


def test_naive_times_are_read_as_utc() -> None:
    assert slis.timestamp(WHEN.replace(tzinfo=None)) == WHEN.timestamp()


def test_exposition_holds_exactly_the_samples() -> None:
    push = slis.drift("check-drift", "fraud", "7", share=math.nan, threshold=0.5)
    text = generate_latest(slis.registry_of(push.samples)).decode()
    assert "# TYPE mlre_model_drift_share gauge" in text
    assert 'mlre_model_drift_share{model="fraud",version="7"} NaN' in text
    assert 'mlre_model_drift_threshold{model="fraud",version="7"} 0.5' in text
    assert len([line for line in text.splitlines() if not line.startswith("#")]) == 2


# ---- pushing ---------------------------------------------------------------------------------


def test_push_puts_the_group_with_a_short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _sent(monkeypatch)
    full = slis.materialization("materialize-features", "v", succeeded=True, newest_event=WHEN)
    partial = slis.materialization("materialize-features", "v", succeeded=False, newest_event=None)

    assert slis.push("http://gw:9091", [full, partial])

    assert [method for method, _ in calls] == ["put", "post"]
    for _, call in calls:
        assert call["gateway"] == "http://gw:9091"
        assert call["job"] == "mlre-flows"
        assert call["grouping_key"] == {"flow": "materialize-features", "feature_view": "v"}
        assert call["timeout"] == slis.PUSH_TIMEOUT_S <= 5


def test_nothing_is_pushed_without_a_pushgateway(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _sent(monkeypatch)
    before = slis.push_counts().get("skipped", 0)
    assert not slis.push("", [slis.flow_run("f", "", succeeded=True, finished=WHEN)])
    assert calls == []
    assert slis.push_counts()["skipped"] == before + 1


def test_an_unreachable_gateway_is_logged_and_counted_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = slis.push_counts().get("failed", 0)
    gateway = f"http://127.0.0.1:{free_port()}"  # nobody listens

    pushed = slis.push(gateway, [slis.flow_run("f", "d", succeeded=True, finished=WHEN)])

    assert pushed is False
    assert slis.push_counts()["failed"] == before + 1
    assert gateway in caplog.text
    assert "mlre_flow_run_success" in caplog.text


def test_a_hung_gateway_costs_the_timeout_not_the_run(silent_gateway: str) -> None:
    before = slis.push_counts().get("failed", 0)
    push = slis.flow_run("f", "d", succeeded=True, finished=WHEN)
    assert slis.push(silent_gateway, [push, push], timeout_s=0.2) is False
    assert slis.push_counts()["failed"] == before + 2


# ---- the flows' state hook -------------------------------------------------------------------


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[slis.Push]:
    pushes: list[slis.Push] = []
    monkeypatch.setattr(flow_slis, "publish", lambda items: pushes.extend(items) or True)
    return pushes


class _Flow:
    name = "materialize-features"


@pytest.mark.parametrize(
    ("state", "success"), [(Completed(), 1.0), (Failed(message="x"), 0.0), (Crashed(), 0.0)]
)
def test_the_hook_turns_prefect_state_into_success(
    published: list[slis.Push], state, success: float
) -> None:
    run = FlowRun(flow_id=uuid.uuid4())  # no deployment: a direct call or a subflow

    flow_slis.record_flow_run(_Flow(), run, state)

    (push,) = published
    assert push.grouping == {"flow": "materialize-features", "deployment": ""}
    values = {s.name: s.value for s in push.samples}
    assert values["mlre_flow_run_success"] == success
    assert values["mlre_flow_run_finished_timestamp_seconds"] == state.timestamp.timestamp()


def test_the_hook_names_the_deployment(
    published: list[slis.Push], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow_slis, "deployment_name", lambda run: "hourly")
    flow_slis.record_flow_run(_Flow(), FlowRun(flow_id=uuid.uuid4()), Completed())
    assert published[0].grouping == {"flow": "materialize-features", "deployment": "hourly"}


def test_the_hook_pushes_even_when_the_api_cannot_name_the_deployment(
    published: list[slis.Push], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(run: FlowRun) -> str:
        raise ConnectionError("Prefect API down")

    monkeypatch.setattr(flow_slis, "deployment_name", unreachable)
    flow_slis.record_flow_run(_Flow(), FlowRun(flow_id=uuid.uuid4()), Failed())
    assert published[0].grouping["deployment"] == ""


def test_deployed_flows_carry_the_hooks() -> None:
    from flows.consistency import validate_feature_consistency
    from flows.drift import check_drift
    from flows.materialize import materialize_features
    from flows.monitoring import monitor_performance

    for flow in (
        materialize_features,
        validate_feature_consistency,
        check_drift,
        monitor_performance,
    ):
        for hooks in (flow.on_completion_hooks, flow.on_failure_hooks, flow.on_crashed_hooks):
            assert hooks == [flow_slis.record_flow_run], flow.name

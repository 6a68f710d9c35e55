"""The `remediate` flow answering SLO alerts: a real Prefect server (harness), a real MLflow
server with real registered models, and a throwaway local feature store.

Each alert is the payload the relay puts in its Prefect event (mlre.alerts.alert_event), with a
unique `instance` label, so the repeat guard (runs of the same problem key) only sees the runs a
test starts itself. Acting leaves an audit record by `prefect:remediate`; escalating changes
nothing in the registry and leaves an `escalation` artifact and an `mlre.alert.escalated` event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.remediation import RemediationResult, remediate
from mlre import canary, registry
from mlre.alerts import ESCALATED_EVENT, Alert, alert_event, resource_id
from mlre.canary import CANARY_ROLLBACK_ACTION, CANARY_SHARE_TAG
from mlre.remediation import RemediationError, alert_fields
from mlre.settings import get_settings
from mlre.waiting import wait_until
from tests.integration.conftest import recent_config
from tests.integration.test_canary_flow import rollout  # noqa: F401  (fixture reused)
from tests.integration.test_feature_flows import _artifacts
from tests.integration.test_serving import local_env, register_model  # noqa: F401
from tests.support.prefect_runs import task_run_states

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ACTOR = "prefect:remediate"
VIEW = "customer_daily_stats_fv"
CHECKED = ["txn_count_1d", "txn_amount_sum_1d", "avg_amount_30d"]  # of VIEW


def firing(name: str, remediation: str, **labels: str) -> dict[str, Any]:
    """The `alert` parameter of a remediation run: the relay's event payload of a firing alert.
    A unique `instance` label makes it a problem (and fingerprint) of its own."""
    alert = Alert(
        status="firing",
        labels={
            "alertname": name,
            "severity": "page",
            "instance": f"pytest-{uuid.uuid4().hex[:8]}",
            **labels,
        },
        annotations={
            "remediation": remediation,
            "runbook_url": f"https://runbooks.example/{name}.md",
            "summary": f"{name} is burning its error budget",
        },
        startsAt=datetime.now(UTC) - timedelta(minutes=10),
        generatorURL="http://prometheus.example/graph?g0.expr=up",
        fingerprint=uuid.uuid4().hex[:16],
    )
    return alert_event(alert, datetime.now(UTC))["payload"]


def run(action: str, alert: dict[str, Any], **params: Any) -> tuple[Any, RemediationResult]:
    """One remediation run that completes (escalating is a completed run too)."""
    state = remediate(action, alert, return_state=True, **params)
    assert state.is_completed(), state.message
    result = state.result()
    assert isinstance(result, RemediationResult)
    return state, result


def registry_state(client: MlflowClient, name: str) -> tuple[dict, dict, dict]:
    """Aliases, model tags (canary share, audit trail) and every version's tags."""
    model = client.get_registered_model(name)
    versions = {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}
    return dict(model.aliases), dict(model.tags), versions


def start_canary(client: MlflowClient, name: str, version: str, share: float = 0.25) -> None:
    """What canary-rollout leaves while a step runs: challenger alias and a share above 0."""
    client.set_registered_model_alias(name, registry.CHALLENGER, version)
    canary.set_share(client, name, share)


def escalations(alert: dict[str, Any]) -> list[Any]:
    """The `mlre.alert.escalated` events the server holds for this alert instance."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[ESCALATED_EVENT]),
        resource=EventResourceFilter(id=[resource_id(*alert_fields(alert))]),
    )
    with get_client(sync_client=True) as client:
        return client.read_events(flt, limit=10).events


def assert_escalated(state: Any, alert: dict[str, Any], action: str, reason: str) -> None:
    """The escalation artifact of this run and the escalation event of this alert."""
    artifacts = _artifacts(state)
    assert {"alert", "escalation"} <= set(artifacts)
    assert "remediation" not in artifacts
    page = str(artifacts["escalation"].data)
    assert f"Escalated: {alert['alertname']}" in page
    assert reason in page
    assert alert["runbook_url"] in page
    events = wait_until(
        lambda: escalations(alert),
        timeout_s=30,
        what=f"the {ESCALATED_EVENT} event of {alert['alertname']}",
        interval_s=0.3,
    )
    event = events[0]
    assert event.resource["mlre.alert.severity"] == "page"
    assert event.payload["action"] == action
    assert event.payload["reason"] == reason
    assert event.payload["runbook_url"] == alert["runbook_url"]


# --------------------------------------------------------------------------------------------
# rollback-canary
# --------------------------------------------------------------------------------------------


def test_running_canary_is_rolled_back_and_audited(rollout, mlflow_server) -> None:  # noqa: F811
    env, client, name, v1 = rollout
    v2 = register_model(env, mlflow_server.tracking_uri, name, seed=1)
    start_canary(client, name, v2)
    champion_tags = dict(client.get_model_version(name, v1).tags)
    alert = firing("ServingLatencyBudgetBurn", "rollback-canary")

    state, result = run("rollback-canary", alert)

    assert result.outcome == "remediated", result.reason
    assert f"canary version {v2}" in result.details[0]
    model = client.get_registered_model(name)
    assert model.aliases == {registry.CHAMPION: v1}  # challenger gone, champion untouched
    assert model.tags[CANARY_SHARE_TAG] == "0"
    tags = client.get_model_version(name, v2).tags
    assert tags[registry.ROLLED_BACK_TAG] == "true"
    assert "ServingLatencyBudgetBurn" in tags[registry.ROLLED_BACK_REASON_TAG]
    assert dict(client.get_model_version(name, v1).tags) == champion_tags
    last = registry.history(client, name)[-1]
    assert (last.action, last.from_version, last.to_version) == (CANARY_ROLLBACK_ACTION, v1, v2)
    assert last.actor == ACTOR
    assert last.run_id == str(state.state_details.flow_run_id)
    assert "ServingLatencyBudgetBurn" in last.reason
    assert {"alert", "remediation"} <= set(_artifacts(state))
    assert "escalation" not in _artifacts(state)


def test_no_running_canary_escalates_and_changes_nothing(rollout) -> None:  # noqa: F811
    _env, client, name, _v1 = rollout
    before = registry_state(client, name)
    alert = firing("ServingAvailabilityBudgetBurn", "rollback-canary")

    state, result = run("rollback-canary", alert)

    assert result.outcome == "escalated"
    assert "no canary is running" in result.reason
    assert registry_state(client, name) == before
    assert_escalated(state, alert, "rollback-canary", result.reason)


# --------------------------------------------------------------------------------------------
# rollback-model
# --------------------------------------------------------------------------------------------


def _promote_second(env, client: MlflowClient, name: str, uri: str) -> str:
    """v2 registered and promoted over the champion v1 (previous-champion <- v1)."""
    v2 = register_model(env, uri, name, seed=1)
    registry.promote(
        client, name, v2, reason="passed the gate", run_id="pytest", actor="tester",
        lock=registry.file_lock(env.settings),
    )  # fmt: skip
    return v2


def test_healthy_previous_champion_is_restored(rollout, mlflow_server) -> None:  # noqa: F811
    env, client, name, v1 = rollout
    client.set_model_version_tag(name, v1, registry.GATE_PASSED_TAG, "true")
    v2 = _promote_second(env, client, name, mlflow_server.tracking_uri)
    alert = firing("ModelQualityBudgetBurn", "rollback-model")

    state, result = run("rollback-model", alert)

    assert result.outcome == "remediated", result.reason
    assert result.details == (f"champion of {name!r}: {v2} -> {v1}",)
    assert client.get_registered_model(name).aliases == {registry.CHAMPION: v1}
    assert client.get_model_version(name, v2).tags[registry.ROLLED_BACK_TAG] == "true"
    last = registry.history(client, name)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", v2, v1)
    assert last.actor == ACTOR
    assert last.run_id == str(state.state_details.flow_run_id)
    assert "ModelQualityBudgetBurn" in last.reason


@pytest.mark.parametrize("previous", ["missing", "gate-refused", "rolled-back"])
def test_unhealthy_or_missing_previous_champion_escalates(
    rollout,  # noqa: F811
    mlflow_server,
    previous: str,
) -> None:
    env, client, name, v1 = rollout
    if previous != "missing":
        _promote_second(env, client, name, mlflow_server.tracking_uri)
    if previous == "gate-refused":
        client.set_model_version_tag(name, v1, registry.GATE_PASSED_TAG, "false")
        client.set_model_version_tag(name, v1, registry.GATE_REASONS_TAG, '["ROC AUC too low"]')
    if previous == "rolled-back":
        client.set_model_version_tag(name, v1, registry.ROLLED_BACK_TAG, "true")
        client.set_model_version_tag(name, v1, registry.ROLLED_BACK_REASON_TAG, "bad canary")
    before = registry_state(client, name)
    alert = firing("ModelQualityBudgetBurn", "rollback-model")

    state, result = run("rollback-model", alert)

    assert result.outcome == "escalated"
    expected = {
        "missing": "has no 'previous-champion' to restore",
        "gate-refused": 'the evaluation gate refused it (["ROC AUC too low"])',
        "rolled-back": "it was rolled back (bad canary)",
    }[previous]
    assert expected in result.reason
    assert registry_state(client, name) == before
    assert "escalation" in _artifacts(state)


# --------------------------------------------------------------------------------------------
# The repeat guard
# --------------------------------------------------------------------------------------------


def test_repeat_guard_escalates_without_acting(rollout, mlflow_server) -> None:  # noqa: F811
    env, client, name, v1 = rollout
    v2 = register_model(env, mlflow_server.tracking_uri, name, seed=1)
    alert = firing("ServingLatencyBudgetBurn", "rollback-canary")
    for _ in range(2):  # the canary comes back (re-armed) and the same alert fires again
        start_canary(client, name, v2)
        assert run("rollback-canary", alert, max_attempts=2)[1].outcome == "remediated"
    start_canary(client, name, v2)
    before = registry_state(client, name)

    state, result = run("rollback-canary", alert, max_attempts=2)

    assert result.outcome == "escalated"
    assert "2 remediation runs for this alert" in result.reason
    assert "(limit 2)" in result.reason
    assert registry_state(client, name) == before  # the canary still runs: nothing was done
    assert [r.action for r in registry.history(client, name)] == [CANARY_ROLLBACK_ACTION] * 2
    tasks = task_run_states(state.state_details.flow_run_id)
    assert "read-prior-remediations" in tasks
    assert "roll-back-running-canary" not in tasks
    assert_escalated(state, alert, "rollback-canary", result.reason)

    # The ticket of the same burn (same labels but severity, its own fingerprint) is the same
    # problem: it escalates too.
    labels = alert["labels"]
    ticket = firing(labels["alertname"], "rollback-canary", **{**labels, "severity": "ticket"})
    assert ticket["fingerprint"] != alert["fingerprint"]
    assert run("rollback-canary", ticket, max_attempts=2)[1].outcome == "escalated"
    assert registry_state(client, name) == before

    # The guard counts runs of this alert's problem only: another instance still acts.
    other = firing("ServingLatencyBudgetBurn", "rollback-canary")
    assert run("rollback-canary", other, max_attempts=2)[1].outcome == "remediated"
    assert client.get_registered_model(name).aliases == {registry.CHAMPION: v1}


# --------------------------------------------------------------------------------------------
# backfill-features
# --------------------------------------------------------------------------------------------


def _newest_rows(env, before: datetime | None = None) -> pd.DataFrame:
    """Per customer, the newest source row of VIEW (optionally: stamped before `before`)."""
    rows = pd.read_parquet(env.settings.lake_dir / "sources" / "customer_daily_stats")
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    if before is not None:
        rows = rows[rows["event_timestamp"] < before]
    newest = rows.sort_values("event_timestamp").groupby("customer_id").tail(1)
    return newest.set_index("customer_id").sort_index()


def _served(env, keys: list[int]) -> pd.DataFrame:
    """What the online store serves for the keys (Feast's get_online_features)."""
    store = env.reopen()
    frame = store.get_online_features(
        features=[f"{VIEW}:{name}" for name in CHECKED],
        entity_rows=[{"customer_id": key} for key in keys],
    ).to_df()
    return frame.set_index("customer_id").sort_index()


@pytest.fixture
def late_store(make_feature_env, prefect_harness, monkeypatch):
    """A local store whose online copy of VIEW stops a day short: its newest events are
    missing (materialized up to 12 h before them), as when materialization fell behind."""
    from mlre.features.materialize import Window, materialize_view

    env = make_feature_env("local", config=recent_config())
    newest = _newest_rows(env)["event_timestamp"].max().to_pydatetime()
    end = newest - timedelta(hours=12)
    view = env.store.get_feature_view(VIEW)
    materialize_view(env.store, view, Window(end - timedelta(days=30), end), partitions=1)
    monkeypatch.setenv("MLRE_HOME", str(env.settings.home))
    monkeypatch.setenv("MLRE_STORE_PROFILE", "local")
    get_settings.cache_clear()
    yield env, newest
    get_settings.cache_clear()


def _values_match(served: pd.DataFrame, expected: pd.DataFrame) -> pd.Series:
    """Per customer: every checked feature served equals the expected row's."""
    expected = expected.loc[served.index, CHECKED].astype("float64")
    return (served[CHECKED].astype("float64") - expected).abs().max(axis=1) < 1e-9


def test_backfill_serves_the_newest_events(late_store) -> None:
    env, newest = late_store
    latest = _newest_rows(env)
    keys = [int(key) for key in latest.index]
    stale = _newest_rows(env, before=newest)
    before = _served(env, keys)
    assert _values_match(before, stale).all()  # served: the day before the newest events
    assert not _values_match(before, latest).all()
    alert = firing("FeatureFreshnessBudgetBurn", "backfill-features", feature_view=VIEW)

    state, result = run("backfill-features", alert)

    assert result.outcome == "remediated", result.reason
    assert result.details[0].startswith(f"caught {VIEW} up to now")
    assert _values_match(_served(env, keys), latest).all()
    recorded = env.reopen().get_feature_view(VIEW, allow_registry_cache=False)
    assert recorded.most_recent_end_time >= newest
    assert "remediation" in _artifacts(state)


def test_backfill_without_feature_view_label_escalates(prefect_harness) -> None:
    alert = firing("FeatureFreshnessBudgetBurn", "backfill-features")

    state, result = run("backfill-features", alert)

    assert result.outcome == "escalated"
    assert "no feature_view label" in result.reason
    assert "escalation" in _artifacts(state)


# --------------------------------------------------------------------------------------------
# Refused before anything happens
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "bad", "message"),
    [
        ("rollback-canary", ("problem", "fingerprint"), "has no alertname/fingerprint"),
        ("restart-everything", (), "Unknown remediation 'restart-everything'"),
    ],
    ids=["alert-without-problem-or-fingerprint", "unknown-action"],
)
def test_malformed_alert_or_unknown_action_is_refused_before_acting(
    rollout,  # noqa: F811
    mlflow_server,
    action: str,
    bad: tuple[str, ...],
    message: str,
) -> None:
    env, client, name, _v1 = rollout
    v2 = register_model(env, mlflow_server.tracking_uri, name, seed=1)
    start_canary(client, name, v2)  # a canary a rollback would stop
    before = registry_state(client, name)
    alert = firing("ServingLatencyBudgetBurn", "rollback-canary")
    for key in bad:
        alert.pop(key)

    state = remediate(action, alert, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert type(error) is RemediationError, repr(error)
    assert message in str(error)
    assert registry_state(client, name) == before
    assert [key for key in _artifacts(state) if key] == []  # not even the alert artifact
    assert task_run_states(state.state_details.flow_run_id) == {}

"""Remediation decisions: which action, when to escalate instead, what a person reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlre import remediation
from mlre.remediation import Limits, PriorRun, RemediationError

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ALERT = {
    "alertname": "FeatureFreshnessBudgetBurn",
    "fingerprint": "f1",
    "status": "firing",
    "severity": "page",
    "starts_at": "2026-12-04T11:58:00+00:00",
    "labels": {"alertname": "FeatureFreshnessBudgetBurn", "feature_view": "daily_fv"},
    "annotations": {"summary": "stale"},
    "runbook_url": "runbooks/FeatureFreshnessBudgetBurn.md",
}


def run(problem: str, minutes_ago: float) -> PriorRun:
    return PriorRun(problem, "backfill-features", NOW - timedelta(minutes=minutes_ago), "")


def test_every_action_has_a_deployment_and_unknown_ones_are_refused() -> None:
    assert remediation.deployment_name("rollback-canary") == "remediate/rollback-canary"
    with pytest.raises(RemediationError, match="Unknown remediation 'reboot'"):
        remediation.deployment_name("reboot")


def test_repeats_count_only_this_alert_inside_the_window() -> None:
    limits = Limits(max_attempts=2, window=timedelta(hours=1))
    prior = [run("f1", 10), run("f1", 50), run("f1", 70), run("other", 5)]
    assert remediation.repeats(prior, "f1", NOW, limits) == 2
    assert remediation.repeat_reason(1, limits) is None
    reason = remediation.repeat_reason(2, limits)
    assert reason is not None
    assert "2 remediation runs" in reason
    assert "limit 2" in reason


def test_the_alert_names_its_views_and_its_identity() -> None:
    assert remediation.feature_views(ALERT) == ["daily_fv"]
    assert remediation.feature_views({"labels": {}}) == []
    assert remediation.alert_fields(ALERT) == ("FeatureFreshnessBudgetBurn", "f1")
    with_problem = {**ALERT, "problem": "p1"}  # the page and the ticket of one burn share it
    assert remediation.alert_fields(with_problem) == ("FeatureFreshnessBudgetBurn", "p1")
    with pytest.raises(RemediationError, match="no alertname/fingerprint"):
        remediation.alert_fields({"labels": {}})


def test_a_repair_rewrites_the_longest_ttl_of_its_views() -> None:
    day = timedelta(days=1)
    assert remediation.rewrite_lookback([day, 2 * day]) == 2 * day
    assert remediation.rewrite_lookback([None]) == remediation.DEFAULT_REWRITE_LOOKBACK
    assert remediation.rewrite_lookback([timedelta(0), day]) == remediation.DEFAULT_REWRITE_LOOKBACK


def test_what_a_person_reads_names_the_runbook_and_the_reason() -> None:
    text = remediation.escalation_markdown(ALERT, "backfill-features", "it failed", ["detail"])
    assert "runbooks/FeatureFreshnessBudgetBurn.md" in text
    assert "it failed" in text
    assert "- detail" in text
    shown = remediation.alert_markdown(ALERT, "backfill-features")
    assert "| feature_view | daily_fv |" in shown
    assert "| summary | stale |" in shown


def test_a_crashed_run_alert_names_its_run_and_reruns_it_once() -> None:
    run_id = "0b7c6a52-3f0e-4c53-9f55-4f4f1c1a0a11"
    alert = {"alertname": "FlowRunCrashed", "labels": {"flow_run_id": f"prefect.flow-run.{run_id}"}}
    assert remediation.crashed_run_id(alert) == run_id
    assert remediation.crashed_run_id({"labels": {"flow_run_id": run_id}}) == run_id
    assert remediation.rerun_idempotency_key(run_id) == remediation.rerun_idempotency_key(run_id)
    with pytest.raises(RemediationError, match="'FlowRunCrashed' has no flow_run_id label"):
        remediation.crashed_run_id({"alertname": "FlowRunCrashed", "labels": {}})
    with pytest.raises(RemediationError, match=r"flow_run_id label 'prefect\.flow-run\.42' is not"):
        remediation.crashed_run_id(
            {"alertname": "X", "labels": {"flow_run_id": "prefect.flow-run.42"}}
        )

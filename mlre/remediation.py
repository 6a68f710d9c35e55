"""What an alert's remediation does, when it must escalate instead, and what a person reads.

Each SLO alert names its remediation in the rule's `remediation` annotation (slos/*.yaml,
documented in the alert's runbook); the relay carries it into the Prefect event, and one
automation per remediation runs its deployment (`remediate/<action>`). Pure decisions live here;
flows/remediation.py does the work through the same code paths as the lifecycle flows.

Escalation, never a loop: a remediation escalates (a page-severity `mlre.alert.escalated` event
and a markdown artifact naming the runbook) when it cannot act (no canary running, no healthy
previous champion, no feature view in the alert), when it failed, or when the same alert already
had `max_attempts` remediation runs within `window`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from mlre.errors import MlreError

ACTIONS: dict[str, str] = {
    "rollback-canary": "roll the running canary back (share 0, challenger alias removed)",
    "rollback-model": "restore previous-champion when it exists and passed its gate",
    "backfill-features": "catch the stale feature views up to now (materialize-features)",
    "repair-consistency": "re-materialize the mismatched views, then re-check consistency",
    "retrain": "hand the alert to the retrain automation (mlre.model.drift-detected)",
    "rerun-crashed": "re-run a crashed flow run of a deployment, with its parameters",
}
DEPLOYMENT_FLOW = "remediate"
REMEDIATION_ANNOTATION = "remediation"
DEFAULT_REWRITE_LOOKBACK = timedelta(days=3)  # the SLO alert annotation naming the action
# A flow run whose process died (node lost, OOM kill, worker SIGKILL) is set Crashed by the zombie
# automation, and Prefect's Crashed event is turned into an alert of this name (no SLO alert can
# see it: the process that would have pushed its final state is gone).
CRASHED_ALERT = "FlowRunCrashed"
FLOW_RUN_RESOURCE = "prefect.flow-run."


class RemediationError(MlreError):
    """A remediation was asked for something it does not know (unknown action, bad alert)."""


@dataclass(frozen=True)
class Limits:
    """How often one alert may be remediated before it escalates instead."""

    max_attempts: int = 2
    window: timedelta = timedelta(hours=6)


@dataclass(frozen=True)
class PriorRun:
    """A remediation flow run already started for some alert problem (read from Prefect)."""

    problem: str
    action: str
    started_at: datetime
    state: str


def deployment_name(action: str) -> str:
    """`remediate/<action>`: the deployment an action's automation runs."""
    check_action(action)
    return f"{DEPLOYMENT_FLOW}/{action}"


def check_action(action: str) -> str:
    if action not in ACTIONS:
        raise RemediationError(
            f"Unknown remediation {action!r}; use one of {sorted(ACTIONS)} in the SLO's "
            "alerting.annotations.remediation (slos/*.yaml) or leave it out to page only."
        )
    return action


def alert_fields(alert: Mapping[str, Any]) -> tuple[str, str]:
    """(alertname, problem key) of an alert event payload, or a RemediationError naming them.

    The problem key (mlre.alerts.problem_key) is the same for the page and the ticket of one
    burn; payloads without one fall back to Alertmanager's fingerprint."""
    name = alert.get("alertname")
    problem = alert.get("problem") or alert.get("fingerprint")
    if not isinstance(name, str) or not name or not isinstance(problem, str) or not problem:
        raise RemediationError(
            f"The alert parameter has no alertname/fingerprint (got keys {sorted(alert)}); "
            "remediations run from mlre.alert.firing events (the relay's payload)."
        )
    return name, problem


def repeats(prior: Iterable[PriorRun], problem: str, now: datetime, limits: Limits) -> int:
    """Remediation runs already started for this problem within the window."""
    since = now - limits.window
    return sum(1 for run in prior if run.problem == problem and run.started_at >= since)


def repeat_reason(count: int, limits: Limits) -> str | None:
    """Why to escalate instead of acting again (None: act)."""
    if count < limits.max_attempts:
        return None
    return (
        f"{count} remediation runs for this alert within {limits.window} (limit "
        f"{limits.max_attempts}): the fix does not hold, a person must look"
    )


def feature_views(alert: Mapping[str, Any]) -> list[str]:
    """The feature views an alert is about (its `feature_view` label)."""
    view = (alert.get("labels") or {}).get("feature_view", "")
    return [view] if view else []


def crashed_run_id(alert: Mapping[str, Any]) -> str:
    """The crashed flow run's id (its `flow_run_id` label, a Prefect resource id or a UUID)."""
    value = str((alert.get("labels") or {}).get("flow_run_id", ""))
    run_id = value.removeprefix(FLOW_RUN_RESOURCE)
    if not run_id:
        raise RemediationError(
            f"Alert {alert.get('alertname', '?')!r} has no flow_run_id label; rerun-crashed runs "
            f"from the {CRASHED_ALERT} automation's alert (flows.automations)."
        )
    try:
        return str(UUID(run_id))
    except ValueError:
        raise RemediationError(
            f"Alert {alert.get('alertname', '?')!r}: flow_run_id label {value!r} is not a flow "
            "run id (a UUID, or prefect.flow-run.<UUID>); nothing was re-run."
        ) from None


def rerun_idempotency_key(flow_run_id: str) -> str:
    """One re-run per crashed flow run, however often its remediation is retried."""
    return f"mlre-rerun-crashed-{flow_run_id}"


def rewrite_lookback(ttls: Iterable[timedelta | None]) -> timedelta:
    """How far back a consistency repair re-materializes: the longest TTL among the views
    (what the check compares), DEFAULT_REWRITE_LOOKBACK for a view without a TTL."""
    spans = [ttl if ttl and ttl > timedelta(0) else DEFAULT_REWRITE_LOOKBACK for ttl in ttls]
    return max(spans, default=DEFAULT_REWRITE_LOOKBACK)


def escalation_markdown(
    alert: Mapping[str, Any], action: str, reason: str, details: Sequence[str] = ()
) -> str:
    """The artifact a person reads when a remediation hands over."""
    name = alert.get("alertname", "?")
    runbook = alert.get("runbook_url") or f"runbooks/{name}.md"
    lines = [
        f"# Escalated: {name}",
        "",
        f"**Remediation `{action}` handed over to a person:** {reason}.",
        "",
        f"- Runbook: [{runbook}]({runbook})",
        f"- Severity: page (was {alert.get('severity') or 'unset'})",
        f"- Problem `{alert.get('problem', '?')}` (alert fingerprint "
        f"`{alert.get('fingerprint', '?')}`), since {alert.get('starts_at')}",
    ]
    lines += [f"- {detail}" for detail in details]
    return "\n".join(lines)


def alert_markdown(alert: Mapping[str, Any], action: str) -> str:
    """The alert as the remediation run received it: labels, values, runbook link."""
    name = alert.get("alertname", "?")
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    runbook = alert.get("runbook_url") or f"runbooks/{name}.md"
    lines = [
        f"# {name} → `{action}`",
        "",
        f"{ACTIONS.get(action, action)}.",
        "",
        f"- Status: {alert.get('status')}, since {alert.get('starts_at')}",
        f"- Runbook: [{runbook}]({runbook})",
        f"- Source: {alert.get('generator_url') or 'n/a'}",
        "",
        "| label | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in sorted(labels.items())],
    ]
    if annotations:
        lines += ["", "| annotation | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in sorted(annotations.items())]
    return "\n".join(lines)

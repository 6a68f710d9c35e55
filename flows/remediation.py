"""Flow `remediate`: what runs when an SLO alert fires (one deployment per action, see
mlre.remediation for the actions and flows.automations for the triggers).

Every run shows the alert it answers (labels, values, runbook link) as a markdown artifact, acts
through the same code as the lifecycle flows (alias moves through mlre.registry under the
promotion lock, backfills through materialize-features, the re-check through
validate-feature-consistency, retraining through the retrain automation, a crashed run through
a new run of its deployment), and escalates rather than loops: a page-severity
`mlre.alert.escalated` event plus an `escalation` artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import resume, slis
from flows._common import mlflow_client, server_task, store_for
from flows.automations import DRIFT_EVENT, emit_model_event
from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.locks import prefect_lock
from flows.materialize import MaterializeParams, materialize_features
from mlre import canary, registry, remediation
from mlre import slis as core_slis
from mlre.alerts import ESCALATED_EVENT, resource_id
from mlre.errors import MlreError
from mlre.settings import get_settings


@dataclass(frozen=True)
class RemediationResult:
    """What a remediation run did: `remediated`, `escalated` (with why), and the details."""

    action: str
    outcome: str
    reason: str
    details: tuple[str, ...] = ()


class Escalation(MlreError):
    """The remediation cannot or must not act; a person takes over (the run still completes)."""


def _run_id() -> str:
    return str(flow_run.get_id() or "")


@server_task("read-prior-remediations", retries=2)
def prior_runs(problem: str, window: timedelta) -> int:
    """Remediation runs of this alert problem started within `window`, this one excluded."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[remediation.DEPLOYMENT_FLOW])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=now - window)),
            sort=FlowRunSort.START_TIME_DESC,  # the newest 200 are the ones a guard needs
            limit=200,
        )
    me = _run_id()
    prior = [
        remediation.PriorRun(
            problem=_problem(run.parameters.get("alert") or {}),
            action=str(run.parameters.get("action", "")),
            started_at=run.start_time or now,
            state=run.state_type.value if run.state_type else "",
        )
        for run in runs
        if str(run.id) != me
    ]
    return remediation.repeats(prior, problem, now, remediation.Limits(window=window))


def _problem(alert: dict[str, Any]) -> str:
    try:
        return remediation.alert_fields(alert)[1]
    except remediation.RemediationError:
        return ""


@server_task("roll-back-running-canary", retries=2, retry_delay_seconds=[2, 10])
def roll_back_canary(model_name: str, alertname: str) -> str:
    """Stop the canary that is running now (share > 0); Escalation when none is."""
    client = mlflow_client()
    model = registry.get_model(client, model_name)
    share = canary.parse_share(model.tags.get(canary.CANARY_SHARE_TAG))
    version = model.aliases.get(registry.CHALLENGER)
    if share <= 0 or version is None:
        raise Escalation(
            f"no canary is running for {model_name!r} (share {share:g}, challenger "
            f"{version or 'none'}): the burn comes from the champion itself"
        )
    canary.record_canary_rollback(
        client,
        model_name,
        str(version),
        reason=f"alert {alertname}: serving SLO burning while the canary ran",
        run_id=_run_id(),
        actor="prefect:remediate",
        lock=prefect_lock,
    )
    return f"canary version {version} of {model_name!r} rolled back (share {share:g} -> 0)"


@server_task("restore-healthy-previous-champion", retries=2, retry_delay_seconds=[2, 10])
def roll_back_model(model_name: str, alertname: str) -> str:
    """Champion <- previous-champion when that version passed its gate and was never rolled
    back; Escalation otherwise (paging beats restoring a model known to be bad)."""
    client = mlflow_client()
    model = registry.get_model(client, model_name)
    previous = model.aliases.get(registry.PREVIOUS_CHAMPION)
    if previous is None:
        raise Escalation(f"{model_name!r} has no {registry.PREVIOUS_CHAMPION!r} to restore")
    problems = registry.refusal_reasons(registry.get_version(client, model_name, previous))
    if problems:
        raise Escalation(
            f"previous champion {previous} of {model_name!r} is not healthy: {'; '.join(problems)}"
        )
    record = registry.rollback(
        client,
        model_name,
        reason=f"alert {alertname}: model quality budget burning",
        run_id=_run_id(),
        actor="prefect:remediate",
        lock=prefect_lock,
    )
    return f"champion of {model_name!r}: {record.from_version} -> {record.to_version}"


def _backfill(views: list[str]) -> str:
    """Catch the views up from where their materialization stopped to now: materialize-features
    in incremental mode (a run that reaches now also pushes the views' new freshness)."""
    if not views:
        raise Escalation("the alert names no feature_view label: nothing to backfill")
    results = materialize_features(MaterializeParams(feature_views=views, mode="incremental"))
    rows = sum(result.rows for result in results)
    return f"caught {', '.join(views)} up to now ({rows:,} source rows materialized)"


@server_task("plan-rewrite-window", retries=2)
def rewrite_start(views: list[str], now: datetime) -> datetime:
    """Where a rewrite of the views' online rows starts: their longest TTL back from now (what
    the consistency check compares), or the default lookback for a view without one."""
    store = store_for(None, None)
    ttls = [store.get_feature_view(view, allow_registry_cache=False).ttl for view in views]
    return now - remediation.rewrite_lookback(ttls)


def _repair_consistency(views: list[str]) -> list[str]:
    """Re-materialize the views' compared window (wrong online rows are overwritten by the
    offline values), then re-check; a re-check that still fails escalates."""
    if not views:
        raise Escalation("the alert names no feature_view label: nothing to repair")
    now = datetime.now(UTC)
    start = rewrite_start(views, now)
    materialize_features(
        MaterializeParams(feature_views=views, mode="backfill", start=start, end=now)
    )
    done = f"re-materialized {', '.join(views)} from {start:%Y-%m-%d %H:%M} UTC to now"
    try:
        validate_feature_consistency(ConsistencyParams(feature_views=views))
    except MlreError as exc:
        raise Escalation(f"still inconsistent after the rewrite: {exc}") from exc
    return [done, f"consistency re-check of {', '.join(views)} passed"]


@server_task("rerun-crashed-flow-run", retries=2, retry_delay_seconds=[2, 10])
def rerun_crashed(alert: dict[str, Any]) -> str:
    """A new run of the crashed run's deployment with the same parameters (once per crashed run:
    an idempotency key) that resumes it: its resumable steps read what the crashed run finished
    (flows/resume.py). First it pushes the crash to the pipeline SLI that its dead process could
    not push. Escalation when the run is not Crashed or has no deployment to run again."""
    from prefect.client.orchestration import get_client

    run_id = remediation.crashed_run_id(alert)
    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(UUID(run_id))
        state = crashed.state_type.value if crashed.state_type else "unknown"
        if state != "CRASHED":
            raise Escalation(f"flow run {crashed.name} is {state}, not Crashed: nothing to re-run")
        if crashed.deployment_id is None:
            raise Escalation(f"flow run {crashed.name} has no deployment to run again")
        flow_name = client.read_flow(crashed.flow_id).name
        deployment = client.read_deployment(crashed.deployment_id).name
        slis.publish([
            core_slis.flow_run(flow_name, deployment, succeeded=False,
                               finished=crashed.end_time or datetime.now(UTC))
        ])  # fmt: skip
        rerun = client.create_flow_run_from_deployment(
            crashed.deployment_id,
            parameters=crashed.parameters,
            tags=["mlre-rerun", resume.resume_tag(resume.run_scope(crashed.id))],
            idempotency_key=remediation.rerun_idempotency_key(run_id),
        )
    message = crashed.state.message if crashed.state else ""
    return (
        f"{flow_name}/{deployment} run {crashed.name} crashed ({message}); re-run as {rerun.name}, "
        "resuming its finished steps"
    )


def _act(action: str, alert: dict[str, Any], model_name: str) -> list[str]:
    name = alert["alertname"]
    if action == "rollback-canary":
        return [roll_back_canary(model_name, name)]
    if action == "rollback-model":
        return [roll_back_model(model_name, name)]
    if action == "backfill-features":
        return [_backfill(remediation.feature_views(alert))]
    if action == "repair-consistency":
        return _repair_consistency(remediation.feature_views(alert))
    if action == "rerun-crashed":
        return [rerun_crashed(alert)]
    # retrain: the existing path, with its own cooldown (flows.automations.retrain_automation).
    emit_model_event(DRIFT_EVENT, model_name, None, [f"alert {name} fired"], {"alert": name})
    return [f"{DRIFT_EVENT} emitted for {model_name!r}: the retrain automation takes it"]


def escalate(alert: dict[str, Any], action: str, reason: str, details: list[str]) -> None:
    """Page a person: the escalation event (Prefect UI, automations) and an artifact."""
    from prefect.events import emit_event

    name, problem = remediation.alert_fields(alert)
    emit_event(
        event=ESCALATED_EVENT,
        resource={
            "prefect.resource.id": resource_id(name, problem),
            "prefect.resource.name": name,
            "mlre.alert.name": name,
            "mlre.alert.severity": "page",
        },
        payload={
            "action": action,
            "reason": reason,
            "runbook_url": alert.get("runbook_url", ""),
            "details": details,
        },
    )
    create_markdown_artifact(
        key="escalation",
        markdown=remediation.escalation_markdown(alert, action, reason, details),
        description=f"{name}: escalated",
    )
    print(f"ESCALATED {name}: {reason}")


@flow(name="remediate", log_prints=True, **slis.flow_run_hooks())
def remediate(
    action: str,
    alert: dict[str, Any],
    model_name: str | None = None,
    max_attempts: int = 2,
    window_hours: float = 6.0,
) -> RemediationResult:
    """Answer one firing alert with `action`, or escalate (see the module docstring)."""
    remediation.check_action(action)
    name, problem = remediation.alert_fields(alert)
    model_name = model_name or get_settings().model_name
    create_markdown_artifact(
        key="alert", markdown=remediation.alert_markdown(alert, action), description=name
    )
    limits = remediation.Limits(max_attempts=max_attempts, window=timedelta(hours=window_hours))
    if reason := remediation.repeat_reason(prior_runs(problem, limits.window), limits):
        escalate(alert, action, reason, [])
        return RemediationResult(action, "escalated", reason)
    try:
        details = _act(action, alert, model_name)
    except Escalation as exc:
        escalate(alert, action, str(exc), [])
        return RemediationResult(action, "escalated", str(exc))
    except Exception as exc:
        escalate(alert, action, f"the remediation failed: {exc}", [])
        raise
    print(f"REMEDIATED {name} with {action}: " + "; ".join(details))
    create_markdown_artifact(
        key="remediation",
        markdown="\n".join([f"# {name}: `{action}` done", "", *[f"- {d}" for d in details]]),
        description=f"{name}: remediated",
    )
    return RemediationResult(action, "remediated", "", tuple(details))

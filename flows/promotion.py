"""Flows `promote-model` and `rollback-model`: MLflow aliases under a Prefect concurrency lock.

A promotion first asks the error-budget policy (`check_budget_policy`, mlre.slo.policy; the
canary rollout asks it too); a rollback never does: it reduces risk."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows import slis
from flows._common import mlflow_client, server_task
from flows.locks import prefect_lock
from mlre import registry
from mlre.settings import get_settings
from mlre.slo import policy

PROMOTE_ACTOR = "prefect:promote-model"


def _audit_markdown(title: str, record: registry.AuditRecord) -> str:
    return "\n".join(
        [
            f"# {title}",
            "",
            "| when | action | from | to | why | run | actor |",
            "|---|---|---|---|---|---|---|",
            f"| {record.when} | {record.action} | {record.from_version} | {record.to_version} "
            f"| {record.reason} | {record.run_id} | {record.actor} |",
        ]
    )


@server_task("check-error-budget-policy", retries=0)
def check_budget_policy(
    change: policy.Change,
    model_name: str,
    subject: str,
    override: policy.Override | None = None,
    prometheus_url: str | None = None,
) -> policy.PolicyDecision:
    """Decide on `change` from the gating SLOs' budgets (mlre.slo.policy), publish the decision
    as the `budget-policy` artifact, and raise BudgetPolicyError when it refuses. Runs before
    anything moves; rollbacks never call it."""
    settings = get_settings()
    reading = policy.read_budgets(settings, prometheus_url=prometheus_url, model_name=model_name)
    decision = policy.decide(
        reading.statuses,
        change,
        policy=policy.BudgetPolicy.from_settings(settings),
        override=override,
        unavailable=reading.problem,
    )
    create_markdown_artifact(
        key="budget-policy",
        markdown=decision.markdown(subject),
        description=f"Error-budget policy on the {decision.what}: {decision.verdict}",
    )
    logger = get_run_logger()
    for reason in decision.reasons:
        logger.info("Error-budget policy (%s): %s", decision.verdict, reason)
    return policy.enforce(decision, subject)


def requested_override(requested: bool, actor: str, why: str) -> policy.Override | None:
    """The operator's override when asked for (BudgetPolicyError without a reason), else None."""
    return policy.Override(actor=actor, why=why) if requested else None


def audited_reason(reason: str, decision: policy.PolicyDecision) -> str:
    """`reason` plus the override note, cut so the note survives the audit record's limit."""
    note = decision.audit_note()
    if not note:
        return reason
    room = max(registry.REASON_MAX - len(note), 0)
    return (reason if len(reason) <= room else reason[: max(room - 1, 0)] + "…") + note


@server_task("move-champion-alias", retries=2, retry_delay_seconds=[2, 10])
def move_champion(
    model_name: str, version: str | None, reason: str, force: bool
) -> registry.AuditRecord:
    """Promote `version` (default: the challenger) while holding the promotion lock."""
    client = mlflow_client()
    if version is None:
        # get_model: an unknown model is a RegistryError (no retry), not a raw MlflowException.
        challenger = registry.get_model(client, model_name).aliases.get(registry.CHALLENGER)
        if challenger is None:
            raise registry.RegistryError(
                f"Model {model_name!r} has no {registry.CHALLENGER!r} alias; run evaluate-model "
                "first or pass the version to promote."
            )
        version = str(challenger)
    return registry.promote(
        client,
        model_name,
        version,
        reason=reason,
        run_id=str(flow_run.get_id()),
        actor=PROMOTE_ACTOR,
        lock=prefect_lock,
        force=force,
    )


@flow(name="promote-model", log_prints=True, **slis.flow_run_hooks())
def promote_model(
    model_name: str | None = None,
    version: str | None = None,
    reason: str = "passed the evaluation gate",
    force: bool = False,
    *,
    override_budget_policy: bool = False,
    override_reason: str = "",
) -> registry.AuditRecord:
    """Move `champion` to the challenger (or a given version); keep the old as previous.

    Refused (BudgetPolicyError, nothing moved) while a gating SLO's error budget is spent
    (mlre.slo.policy); `override_budget_policy=True` with an `override_reason` goes ahead and
    the audit record's reason says so."""
    name = model_name or get_settings().model_name
    override = requested_override(override_budget_policy, PROMOTE_ACTOR, override_reason)
    subject = f"model {name!r}" + (f" version {version}" if version else " (its challenger)")
    decision = check_budget_policy("promote", name, subject, override)
    record = move_champion(name, version, audited_reason(reason, decision), force)
    create_markdown_artifact(
        key="promotion", markdown=_audit_markdown(f"{name}: promotion", record)
    )
    return record


@server_task("restore-previous-champion", retries=2, retry_delay_seconds=[2, 10])
def restore_previous(model_name: str, reason: str) -> registry.AuditRecord:
    """Roll the champion back to previous-champion while holding the promotion lock."""
    return registry.rollback(
        mlflow_client(),
        model_name,
        reason=reason,
        run_id=str(flow_run.get_id()),
        actor="prefect:rollback-model",
        lock=prefect_lock,
    )


@flow(name="rollback-model", log_prints=True, **slis.flow_run_hooks())
def rollback_model(
    model_name: str | None = None, reason: str = "manual rollback"
) -> registry.AuditRecord:
    """Restore the previous champion and record why."""
    name = model_name or get_settings().model_name
    record = restore_previous(name, reason)
    create_markdown_artifact(key="rollback", markdown=_audit_markdown(f"{name}: rollback", record))
    return record

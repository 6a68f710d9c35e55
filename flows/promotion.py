"""Flows `promote-model` and `rollback-model`: MLflow aliases under a Prefect concurrency lock."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows._common import mlflow_client, runtime_settings, transient_only
from flows.locks import prefect_lock
from mlre import registry


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


@task(
    cache_policy=NO_CACHE,
    name="move-champion-alias",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=transient_only,
)
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
        actor="prefect:promote-model",
        lock=prefect_lock,
        force=force,
    )


@flow(name="promote-model", log_prints=True)
def promote_model(
    model_name: str | None = None,
    version: str | None = None,
    reason: str = "passed the evaluation gate",
    force: bool = False,
) -> registry.AuditRecord:
    """Move `champion` to the challenger (or a given version); keep the old as previous."""
    name = model_name or runtime_settings().model_name
    record = move_champion(name, version, reason, force)
    create_markdown_artifact(
        key="promotion", markdown=_audit_markdown(f"{name}: promotion", record)
    )
    return record


@task(
    cache_policy=NO_CACHE,
    name="restore-previous-champion",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=transient_only,
)
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


@flow(name="rollback-model", log_prints=True)
def rollback_model(
    model_name: str | None = None, reason: str = "manual rollback"
) -> registry.AuditRecord:
    """Restore the previous champion and record why."""
    name = model_name or runtime_settings().model_name
    record = restore_previous(name, reason)
    create_markdown_artifact(key="rollback", markdown=_audit_markdown(f"{name}: rollback", record))
    return record

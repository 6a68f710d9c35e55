"""Flows `promote-model` and `rollback-model`: MLflow aliases under a Prefect concurrency lock."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import slis
from flows._common import mlflow_client, server_task
from flows.locks import prefect_lock
from mlre import registry
from mlre.settings import get_settings


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
        actor="prefect:promote-model",
        lock=prefect_lock,
        force=force,
    )


@flow(name="promote-model", log_prints=True, **slis.flow_run_hooks())
def promote_model(
    model_name: str | None = None,
    version: str | None = None,
    reason: str = "passed the evaluation gate",
    force: bool = False,
) -> registry.AuditRecord:
    """Move `champion` to the challenger (or a given version); keep the old as previous."""
    name = model_name or get_settings().model_name
    record = move_champion(name, version, reason, force)
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

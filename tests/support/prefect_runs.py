"""Read back what Prefect recorded about a flow run (its task runs' state histories)."""

from __future__ import annotations

from typing import Any

KEPT_STATES = frozenset({"Retrying", "Failed", "Completed"})


def task_run_states(flow_run_id: Any) -> dict[str, list[str]]:
    """For each task of a flow run (by task name), the retry/terminal states it went through."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        states = {}
        for run in runs:
            history = sorted(prefect.read_task_run_states(run.id), key=lambda s: s.timestamp)
            states[run.name.rsplit("-", 1)[0]] = [s.name for s in history if s.name in KEPT_STATES]
        return states


def deployment_runs(deployment_id: Any) -> list[Any]:
    """The flow runs the server holds for a deployment (any state), newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        )

"""Read back what Prefect recorded about flow runs, and lose the node a run executes on (the
worker-kill fault of tests/reliability and bench/drills)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any
from uuid import UUID

import psutil

from flows.automations import HEARTBEAT_EVENT

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


def heartbeats(run_id: UUID) -> int:
    """Heartbeat events of the run the server has received."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    with get_client(sync_client=True) as client:
        return len(client.read_events(flt, limit=10).events)


def subflows(run_id: UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    flt = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=flt)


def armed(run_id: UUID) -> list[UUID]:
    """Running subflows of the run whose heartbeat the server has."""
    running = [s.id for s in subflows(run_id) if s.state and s.state.type.value == "RUNNING"]
    return [sub for sub in running if heartbeats(sub)]


def run_processes(worker: psutil.Process, run_id: UUID) -> list[psutil.Process]:
    """The worker's descendants executing this flow run (they carry its id in their env)."""
    found = []
    for proc in worker.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                found.append(proc)
    return found


def lose_node(worker: psutil.Process, runners: list[psutil.Process]) -> None:
    """Freeze the flow run first (it cannot finish or report in between), then SIGKILL it and
    the worker with everything it started, and wait until they are gone."""
    for proc in runners:
        proc.send_signal(signal.SIGSTOP)
    family = [worker, *worker.children(recursive=True), *runners]
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(family, timeout=10)
    if alive:
        raise RuntimeError(f"still running after SIGKILL: {alive}")


def run_tree(run_id: UUID) -> list[UUID]:
    """The run and every subflow run below it, at any depth."""
    found, todo = [], [run_id]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(sub.id for sub in subflows(current))
    return found


def persisted_steps(run_id: UUID) -> dict[str, set[str]]:
    """Cache keys of the resumable steps (flows/resume.py) of a run and its subflows, by state
    name: `Completed` (done by this run), `Cached` (read back from an earlier one)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_tree(run_id)))
        )
    steps: dict[str, set[str]] = {}
    for run in runs:
        if run.cache_key and run.state is not None:
            steps.setdefault(run.state.name, set()).add(run.cache_key)
    return steps

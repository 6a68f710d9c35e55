"""Deploy every flow in prefect.yaml to the local platform, run a worker, and follow a run.

The same prefect.yaml serves the cloud: there MLRE_CPU_POOL / MLRE_GPU_POOL name the Kubernetes
pools (`k8s-cpu`, `k8s-gpu`); here both are the `local` process pool.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlre import k8s_labels, local_platform
from mlre.errors import PlatformError
from mlre.settings import PROJECT_ROOT, Settings
from mlre.waiting import WaitTimeout, wait_until

WORKER = f"worker-{k8s_labels.LOCAL_WORK_POOL}"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def deploy_env(settings: Settings) -> dict[str, str]:
    """What prefect.yaml's `{{ $VAR }}` placeholders read on one machine."""
    return {
        **local_platform.child_env(settings),
        "MLRE_PROJECT_DIR": str(PROJECT_ROOT),
        "MLRE_CPU_POOL": k8s_labels.LOCAL_WORK_POOL,
        "MLRE_GPU_POOL": k8s_labels.LOCAL_WORK_POOL,
    }


def ensure_local_pool(name: str = k8s_labels.LOCAL_WORK_POOL) -> bool:
    """Create the process work pool if it is missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                return False
            return True


def deployment_names() -> list[str]:
    """`flow/deployment` names on the server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        return sorted(f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments())


def deploy_all(settings: Settings) -> str:
    """`prefect --no-prompt deploy --all` from the project root; its output, or a PlatformError."""
    prefect = str(local_platform.venv_bin() / "prefect")
    result = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        cwd=PROJECT_ROOT,
        env=deploy_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise PlatformError(
            f"`prefect deploy --all` failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-2000:]}\n"
            "hint: check prefect.yaml and that `mlre up` reports Prefect healthy."
        )
    return result.stdout


def ensure_platform_automations(settings: Settings) -> list[Any]:
    """The retrain automation (drift or degradation event -> ml-pipeline run), the one that
    crashes zombie flow runs (no heartbeat), then one per remediation (alert -> remediate/...);
    names and windows in flows.automations."""
    from flows.automations import ensure_automations, ensure_remediation_automations

    return [
        *ensure_automations(model_name=settings.model_name, heartbeat_s=settings.flow_heartbeat_s),
        *ensure_remediation_automations(),
    ]


def ensure_worker(settings: Settings, pool: str = k8s_labels.LOCAL_WORK_POOL) -> bool:
    """Start `prefect worker start --pool <pool>` unless ours is running; True when started."""
    if local_platform.is_running(settings, WORKER):
        return False
    prefect = str(local_platform.venv_bin() / "prefect")
    local_platform.start_process(
        settings,
        WORKER,
        [prefect, "worker", "start", "--pool", pool, "--type", "process"],
        env=deploy_env(settings),
    )
    return True


@dataclass(frozen=True)
class RunProgress:
    """A flow run's state and the subflows that have finished so far."""

    state: str
    finished_subflows: list[tuple[str, str]]


def trigger(deployment: str, parameters: dict[str, Any] | None = None) -> Any:
    """Create a flow run of `flow-name/deployment-name`; returns it without waiting."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    if deployment.count("/") != 1 or "" in deployment.split("/"):
        raise PlatformError(
            f"deployment {deployment!r} is not of the form FLOW/DEPLOYMENT "
            "(e.g. ml-pipeline/weekly); `prefect deployment ls` lists them."
        )
    try:
        return run_deployment(deployment, parameters=parameters or {}, timeout=0)
    except ObjectNotFound as exc:
        raise PlatformError(
            f"deployment {deployment!r} does not exist on this Prefect server; known: "
            f"{', '.join(deployment_names()) or 'none'}. Run `mlre deploy` first."
        ) from exc


def progress(flow_run_id: Any) -> RunProgress:
    """The run's state and its finished subflows (name, state), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        done = sorted(
            (c for c in children if c.state_type and c.state_type.value in TERMINAL),
            key=lambda c: c.end_time or c.expected_start_time,
        )
        names = {c.flow_id: client.read_flow(c.flow_id).name for c in done}
    return RunProgress(
        state=run.state_type.value if run.state_type else "PENDING",
        finished_subflows=[(names[c.flow_id], c.state_type.value) for c in done],
    )


def follow(
    flow_run_id: Any, echo: Callable[[str], None], timeout_s: float = 1800, poll_s: float = 2.0
) -> str:
    """Print state changes and finished subflows until the run ends; its final state."""
    seen: set[tuple[str, str]] = set()
    last_state = [""]

    def finished() -> str | None:
        now = progress(flow_run_id)
        for item in now.finished_subflows:
            if item not in seen:
                seen.add(item)
                echo(f"  finished {item[0]}: {item[1].lower()}")
        if now.state != last_state[0]:
            echo(f"  run is {now.state.lower()}")
            last_state[0] = now.state
        return now.state if now.state in TERMINAL else None

    try:
        return wait_until(finished, timeout_s=timeout_s, what="flow run", interval_s=poll_s)
    except WaitTimeout as exc:
        raise PlatformError(
            f"flow run {flow_run_id} did not finish within {timeout_s:.0f} s; see the Prefect "
            "UI and the worker log (.mlre/logs/worker-local.log)."
        ) from exc

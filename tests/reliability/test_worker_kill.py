"""Fault: the Prefect worker and the flow run it started are SIGKILLed mid-flow, as when their node
is lost. Nothing is left to report a final state, so only the zombie automation (flows.automations,
created by `mlre deploy`) can end the run: it must turn Crashed once its heartbeats stop, release
the deployment's concurrency slot, and the automatic re-run (`remediate/rerun-crashed`, started
by the Crashed event) must complete through a new worker, reading back every step the crashed run
had finished (flows/resume.py) instead of doing it again.

The platform is real and private (`mlre up` on free ports, `mlre deploy`, the project's own
`ml-pipeline/weekly` deployment: concurrency limit 1, subflows, ~30 s of work after Running).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import psutil
import pytest

from flows import automations, deploy
from mlre.settings import HEARTBEAT_ENV
from mlre.waiting import WaitTimeout, wait_until
from tests.support.prefect_runs import (
    armed,
    deployment_runs,
    heartbeats,
    lose_node,
    persisted_steps,
    run_processes,
)
from tests.support.private_platform import PrivatePlatform, private_platform_home

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.long,  # minutes: `make reliability`, not `make test`
    pytest.mark.fault("Prefect worker SIGKILLed mid-flow"),
    pytest.mark.timeout(900),
]

DEPLOYMENT = "ml-pipeline/weekly"
SMALL = ("--customers", "1500", "--days", "16")
POLL_S = 0.2
START_TIMEOUT_S = 180.0  # scheduled -> running: worker poll, process start, flow import
SLACK_S = 60.0  # past the zombie window: the trigger service's 5 s ticks and a busy machine
RERUN_TIMEOUT_S = 400.0


@pytest.fixture(scope="module", autouse=True)
def platform_exported() -> None:
    """This module runs its own platform, not the bad-input corpus' (conftest's fixture)."""


@pytest.fixture
def plat() -> Iterator[PrivatePlatform]:
    """`mlre up` in a private home on free ports; everything it started is stopped by PID."""
    with private_platform_home("worker-kill") as private:
        yield private


@contextlib.contextmanager
def prefect_api(plat: PrivatePlatform) -> Iterator[None]:
    """Prefect clients in this process talk to the private server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: plat.settings.prefect_api_url}):
        yield


def _ok(result: Any) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _wait(what: str, condition: Callable[[], Any], timeout_s: float) -> Any:
    """Poll until condition() is truthy; its value, or a failure naming what did not happen."""
    try:
        return wait_until(condition, timeout_s=timeout_s, what=what, interval_s=POLL_S)
    except WaitTimeout as exc:
        pytest.fail(str(exc))


def _flow_run(run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _state(run_id: UUID) -> str:
    state = _flow_run(run_id).state
    return state.type.value if state else "PENDING"


def _worker(plat: PrivatePlatform) -> psutil.Process:
    return psutil.Process(plat.pids()[deploy.WORKER])


def test_killed_worker_run_is_crashed_and_a_rerun_completes(plat: PrivatePlatform) -> None:
    _ok(plat.mlre("up"))
    _ok(plat.mlre("generate", *SMALL))
    first_deploy = _ok(plat.mlre("deploy"))
    window = automations.zombie_window(plat.settings.flow_heartbeat_s)
    assert f"{automations.ZOMBIE_AUTOMATION}: no heartbeat for {window}" in first_deploy

    with prefect_api(plat):
        run = deploy.trigger(DEPLOYMENT)
        _wait("flow run Running", lambda: _state(run.id) == "RUNNING", START_TIMEOUT_S)
        worker = _worker(plat)
        runners = _wait("flow-run process", lambda: run_processes(worker, run.id), 30)
        # The worker passed the platform's heartbeat period on to the flow run.
        assert runners[0].environ()[HEARTBEAT_ENV] == str(plat.settings.flow_heartbeat_s)
        # Armed: the server has a heartbeat of the run and of a running subflow (a run killed
        # before its first heartbeat reaches the server is invisible to this detector).
        _wait("heartbeats on the server", lambda: heartbeats(run.id) and armed(run.id), 60)

        lose_node(worker, runners)
        assert _state(run.id) == "RUNNING"  # killed mid-flow; nothing told the server
        armed_subflows = armed(run.id)

        _wait("zombie run Crashed", lambda: _state(run.id) == "CRASHED", window.seconds + SLACK_S)
        crashed = _flow_run(run.id).state
        assert crashed.message == automations.ZOMBIE_MESSAGE.format(window=window)
        # Subflows die in the same process; those that had heartbeated are crashed too.
        crashed_too = lambda: all(_state(s) == "CRASHED" for s in armed_subflows)  # noqa: E731
        _wait("its subflows Crashed", crashed_too, SLACK_S)

        again = _ok(plat.mlre("deploy"))  # a new worker (in Kubernetes: the pod restarted)
        assert "worker: started" in again
        assert _automation_count(automations.ZOMBIE_AUTOMATION) == 1
        # Prefect's Crashed event starts remediate/rerun-crashed, which runs the deployment
        # again with the same parameters; it can, since the crashed run let go of its slot.
        # (The deployment's schedule has created upcoming weekly runs too: the tag tells.)
        reruns = lambda: [r for r in deployment_runs(run.deployment_id) if "mlre-rerun" in r.tags]  # noqa: E731
        (rerun,) = _wait("the automatic re-run", reruns, RERUN_TIMEOUT_S)
        assert rerun.parameters == _flow_run(run.id).parameters
        assert deploy.follow(rerun.id, lambda _: None, RERUN_TIMEOUT_S) == "COMPLETED"
        # It resumed the crashed run: every step that run finished was read back, not redone.
        finished = persisted_steps(run.id).get("Completed", set())
        assert finished <= persisted_steps(rerun.id).get("Cached", set())


def _automation_count(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_automations_by_name(name))

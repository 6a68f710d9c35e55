"""`remediate/rerun-crashed` on a real Prefect server (the session harness): a deployment's flow
run that crashed is run again once, with its parameters; anything else escalates; and Prefect's
own Crashed event, through the automation `mlre deploy` creates, starts the remediation with the
alert its template renders. No worker runs here: runs are created and their states set through
the API, which is all the remediation and the automation see."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prefect import flow

from flows import automations, resume
from flows.remediation import remediate
from mlre import remediation
from mlre.waiting import wait_until
from tests.integration.test_remediation_flows import run
from tests.support.prefect_runs import deployment_runs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ACTION = "rerun-crashed"


@flow(name="crash-target")
def crash_target(n: int = 1, label: str = "") -> int:  # only ever scheduled here, never run
    return n


@pytest.fixture(scope="module")
def target(prefect_harness: None) -> Any:
    """A deployment whose runs the tests crash (its own name: runs never mix across tests)."""
    return crash_target.to_deployment(name=f"target-{uuid.uuid4().hex[:6]}").apply()


def crashed_run(deployment_id: Any, **parameters: Any) -> Any:
    """A run of the deployment, forced Crashed as the zombie automation leaves it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        client.set_flow_run_state(flow_run.id, Crashed(message="no heartbeat"), force=True)
        return client.read_flow_run(flow_run.id)


def crash_alert(flow_run: Any) -> dict[str, Any]:
    """What the automation's template renders for this run (checked by the last test)."""
    resource = f"prefect.flow-run.{flow_run.id}"
    return {
        "alertname": remediation.CRASHED_ALERT,
        "status": "firing",
        "severity": "ticket",
        "problem": f"prefect.deployment.{flow_run.deployment_id}",
        "fingerprint": resource,
        "labels": {"alertname": remediation.CRASHED_ALERT, "flow_run_id": resource},
        "runbook_url": "runbooks/PipelineFlowRunBudgetBurn.md",
    }


def reruns(deployment_id: Any, crashed: Any) -> list[Any]:
    return [r for r in deployment_runs(deployment_id) if r.id != crashed.id]


def test_a_crashed_run_is_run_again_once_with_its_parameters(target: Any) -> None:
    crashed = crashed_run(target, n=7, label="weekly")
    alert = crash_alert(crashed)
    _, result = run(ACTION, alert)
    assert result.outcome == "remediated", result
    (again,) = reruns(target, crashed)
    assert again.parameters == {"n": 7, "label": "weekly"}
    assert "mlre-rerun" in again.tags
    # It resumes the crashed run: its resumable steps read back what that run finished.
    assert resume.resume_tag(str(crashed.id)) in again.tags
    assert again.state_type.value == "SCHEDULED"
    # The same alert again (a retried automation action): still one re-run.
    _, second = run(ACTION, alert)
    assert second.outcome == "remediated"
    assert [r.id for r in reruns(target, crashed)] == [again.id]
    # A third time for this deployment within the window: it keeps crashing, a person looks.
    _, third = run(ACTION, crash_alert(crashed_run(target, n=8)))
    assert third.outcome == "escalated"
    assert "2 remediation runs" in third.reason


def test_a_run_that_did_not_crash_escalates_and_starts_nothing(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    deployment = crash_target.to_deployment(name=f"done-{uuid.uuid4().hex[:6]}").apply()
    with get_client(sync_client=True) as client:
        done = client.create_flow_run_from_deployment(deployment, parameters={"n": 1})
        client.set_flow_run_state(done.id, Completed(), force=True)
        done = client.read_flow_run(done.id)
    _, result = run(ACTION, crash_alert(done))
    assert result.outcome == "escalated"
    assert "is COMPLETED, not Crashed" in result.reason
    assert reruns(deployment, done) == []


@pytest.fixture
def crash_automation(prefect_harness: None) -> Iterator[Any]:
    """`mlre deploy`'s automation for this action, on a deployment of `remediate`."""
    deployment = remediate.to_deployment(name=ACTION, parameters={"action": ACTION}).apply()
    (automation,) = automations.ensure_remediation_automations(
        timedelta(minutes=30), actions=[ACTION]
    )
    try:
        yield deployment
    finally:
        automation.delete()  # other tests crash runs on this server too


def test_prefects_crashed_event_starts_the_remediation_with_the_alert(
    target: Any, crash_automation: Any
) -> None:
    crashed = crashed_run(target, n=3)
    resource = f"prefect.flow-run.{crashed.id}"

    def started() -> Any:
        return [
            r
            for r in deployment_runs(crash_automation)
            if (r.parameters.get("alert") or {}).get("fingerprint") == resource
        ]

    (remediation_run,) = wait_until(started, timeout_s=120, what="the rerun-crashed run")
    alert = remediation_run.parameters["alert"]
    assert remediation_run.parameters["action"] == ACTION
    assert alert["alertname"] == remediation.CRASHED_ALERT
    assert alert["problem"] == f"prefect.deployment.{target}"
    assert alert["labels"]["flow_run_id"] == resource
    assert alert["labels"]["flow_run"] == crashed.name
    assert alert["labels"]["deployment"] == target_name(target)
    assert remediation.crashed_run_id(alert) == str(crashed.id)
    assert remediation.alert_fields(alert) == (
        remediation.CRASHED_ALERT,
        f"prefect.deployment.{target}",
    )


def target_name(deployment_id: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.read_deployment(deployment_id).name)

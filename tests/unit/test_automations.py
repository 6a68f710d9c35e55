"""The zombie-run automation as Prefect's server reads it; the heartbeat setting it relies on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from flows import automations
from flows.automations import AutomationError, zombie_automation
from mlre.settings import HEARTBEAT_ENV, Settings

pytestmark = pytest.mark.unit

FLOW_RUN = f"prefect.flow-run.{uuid.uuid4()}"


def _server_trigger(automation: Any) -> Any:
    """The trigger as the server's trigger service evaluates it."""
    from prefect.server.events.schemas.automations import EventTrigger

    return EventTrigger.model_validate(automation.trigger.model_dump())


def _event(name: str, resource_id: str = FLOW_RUN) -> Any:
    from prefect.server.events.schemas.events import ReceivedEvent

    return ReceivedEvent(
        id=uuid.uuid4(),
        occurred=datetime.now(UTC),
        event=name,
        resource={"prefect.resource.id": resource_id},
    )


def test_zombie_automation_crashes_a_silent_flow_run() -> None:
    from prefect.client.schemas.objects import StateType

    automation = zombie_automation(30)
    assert automation.name == automations.ZOMBIE_AUTOMATION
    (action,) = automation.actions
    assert action.type == "change-flow-run-state"
    assert action.state == StateType.CRASHED
    assert "0:01:30" in action.message


@pytest.mark.parametrize(("heartbeat_s", "window_s"), [(30, 90), (60, 180), (180, 540)])
def test_window_is_three_missed_heartbeats(heartbeat_s: int, window_s: int) -> None:
    assert zombie_automation(heartbeat_s).trigger.within == timedelta(seconds=window_s)


def test_heartbeat_below_prefects_minimum_is_refused() -> None:
    with pytest.raises(AutomationError, match="MLRE_FLOW_HEARTBEAT_S"):
        zombie_automation(10)


def test_trigger_is_armed_by_a_heartbeat_and_answered_by_any_flow_run_event() -> None:
    trigger = _server_trigger(zombie_automation(30))
    assert trigger.posture == "Proactive"
    assert trigger.for_each == {"prefect.resource.id"}  # one window per flow run
    assert trigger.starts_after("prefect.flow-run.heartbeat")
    assert not trigger.starts_after("prefect.flow-run.Running")
    for follow_up in ("heartbeat", "Completed", "Failed", "Cancelled", "Crashed", "Paused"):
        assert trigger.expects(f"prefect.flow-run.{follow_up}")
    assert not trigger.expects("prefect.task-run.Completed")


def test_trigger_fires_only_when_nothing_followed_the_heartbeat() -> None:
    trigger = _server_trigger(zombie_automation(30))
    assert trigger.meets_threshold(0)  # Proactive: no follow-up within the window -> act
    assert not trigger.meets_threshold(1)


def test_trigger_watches_flow_runs_only() -> None:
    trigger = _server_trigger(zombie_automation(30))
    assert trigger.covers(_event("prefect.flow-run.heartbeat"))
    assert not trigger.covers(_event("prefect.flow-run.heartbeat", "prefect.deployment.x"))


def test_same_definition_is_the_same_spec_whatever_the_ids() -> None:
    first, second = zombie_automation(30), zombie_automation(30)
    second.id = uuid.uuid4()
    assert automations._spec(first) == automations._spec(second)
    assert automations._spec(first) != automations._spec(zombie_automation(60))


def test_runtime_env_exports_the_heartbeat(tmp_path) -> None:
    settings = Settings(home=tmp_path, flow_heartbeat_s=45)
    assert settings.runtime_env()[HEARTBEAT_ENV] == "45"
    assert settings.client_env()[HEARTBEAT_ENV] == "45"


def test_heartbeat_setting_below_prefects_minimum_is_refused(tmp_path) -> None:
    with pytest.raises(ValidationError, match="flow_heartbeat_s"):
        Settings(home=tmp_path, flow_heartbeat_s=5)


def test_prefect_reads_the_exported_heartbeat(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from prefect.settings.models.flows import FlowsSettings

    for name, value in Settings(home=tmp_path).flow_run_env().items():
        monkeypatch.setenv(name, value)
    assert FlowsSettings().heartbeat_frequency == 30


# ---- crashed runs of a deployment: remediate/rerun-crashed ---------------------------------


def _crashed_event(with_deployment: bool) -> Any:
    from prefect.server.events.schemas.events import ReceivedEvent

    related = [
        {"prefect.resource.id": f"prefect.flow.{uuid.uuid4()}", "prefect.resource.role": "flow"}
    ]
    if with_deployment:
        related.append(
            {"prefect.resource.id": f"prefect.deployment.{uuid.uuid4()}",
             "prefect.resource.role": "deployment", "prefect.resource.name": "weekly"}
        )  # fmt: skip
    return ReceivedEvent(
        id=uuid.uuid4(),
        occurred=datetime.now(UTC),
        event=automations.CRASHED_EVENT,
        resource={"prefect.resource.id": FLOW_RUN, "prefect.resource.name": "lucky-otter"},
        related=related,
    )


def test_a_crashed_deployment_run_starts_rerun_crashed_and_a_subflow_does_not() -> None:
    deployment_id = uuid.uuid4()
    automation = automations.crashed_run_automation(deployment_id, timedelta(minutes=30))
    assert automation.name == "mlre-remediate-rerun-crashed"
    (action,) = automation.actions
    assert action.deployment_id == deployment_id
    assert action.parameters["action"] == "rerun-crashed"
    trigger = _server_trigger(automation)
    assert trigger.covers(_crashed_event(with_deployment=True))
    assert not trigger.covers(_crashed_event(with_deployment=False))  # a subflow: no deployment
    assert not trigger.covers(_event("prefect.flow-run.Failed"))  # a failure needs its cause


def test_the_crashed_alert_template_renders_the_alert_a_remediation_reads() -> None:
    import json

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from mlre import remediation

    event = _crashed_event(with_deployment=True)
    rendered = ImmutableSandboxedEnvironment().from_string(automations.CRASHED_ALERT_TEMPLATE)
    alert = json.loads(rendered.render(event=event))
    deployment = event.resource_in_role["deployment"].id
    assert remediation.alert_fields(alert) == (remediation.CRASHED_ALERT, deployment)
    assert remediation.crashed_run_id(alert) == FLOW_RUN.removeprefix("prefect.flow-run.")
    assert alert["labels"]["flow_run"] == "lucky-otter"
    assert alert["labels"]["deployment"] == "weekly"

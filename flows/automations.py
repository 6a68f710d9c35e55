"""The Prefect automations `mlre deploy` creates: retrain on drift, crash zombie flow runs, run
crashed ones again, and remediate SLO alerts.

The closed loop: drift / degradation events, and the automation that retrains on them.

`check-drift` and `monitor-performance` emit `mlre.model.drift-detected` and
`mlre.model.performance-degraded` on the resource `mlre.model.<model name>` (`emit_model_event`).
One automation per model (`retrain_automation`) runs the retraining deployment
(`ml-pipeline/weekly` by default) when either event arrives; `ensure_automations` creates or
updates it on the current Prefect server, idempotently (`mlre deploy` calls it).

Cooldown: the trigger is Reactive with `threshold=1` and `within=cooldown`. Prefect's trigger
service (prefect/server/events/triggers.py, `evaluate`) keeps ONE bucket per automation: the first
matching event opens it, reaches the threshold and fires at once; firing removes the bucket and
opens the next one at [previous end, previous end + cooldown); an event stamped before a bucket's
start is dropped as "already fired". Hence:

- each cooldown-long bucket holds at most one retrain, however many events arrive (a storm of
  drift alerts every few minutes gives one run per cooldown, not one per alert);
- after a quiet period the next event opens a fresh bucket at its own time, so the first run after
  it is at least `cooldown` after the previous one;
- buckets chain back to back while events keep coming, so two runs can sit close together on both
  sides of a bucket boundary: in any sliding `cooldown`-long interval there are at most TWO runs,
  and over a period T at most ceil(T / cooldown) + 1.

The state lives in the server's database (buckets survive a restart of the trigger service), and
the decision is made server-side, so concurrent emitters cannot race past it.

Zombie flow runs: a flow run whose process dies with its node (SIGKILL, OOM kill, lost VM) never
reports a final state and would stay Running forever, holding its deployment's concurrency slot.
Every flow run emits `prefect.flow-run.heartbeat` every `Settings.flow_heartbeat_s` seconds
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY, exported by `Settings.runtime_env` to every process mlre
starts, and set in the Kubernetes work pools' job templates). `zombie_automation` is Prefect's
documented detector (docs: "How to detect and respond to zombie flows"): Proactive, per flow run,
after a heartbeat it expects another flow-run event (heartbeat or state change) within
`MISSED_HEARTBEATS` heartbeat periods, else it sets the run Crashed. Crashed is final, so the
concurrency slot is released and the deployment can run again. It applies to every flow run on
the server: a process that heartbeats less often than the window (a client with Prefect's default
of 180 s) would be crashed while alive, so run flows through mlre's environment.

Crashed runs of a deployment are run again: `crashed_run_automation` answers Prefect's
`prefect.flow-run.Crashed` event (the zombie automation's, or a worker's that saw its process die)
with `remediate/rerun-crashed`, its alert rendered from the event (CRASHED_ALERT_TEMPLATE). The
alert's problem key is the deployment, so the remediation's repeat guard escalates a deployment
whose re-runs keep crashing instead of re-running it forever. Subflows have no deployment and
are not re-run on their own: the parent's re-run runs them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from mlre import remediation
from mlre.alerts import FIRING_EVENT
from mlre.errors import MlreError
from mlre.settings import MIN_FLOW_HEARTBEAT_S

DRIFT_EVENT = "mlre.model.drift-detected"
DEGRADED_EVENT = "mlre.model.performance-degraded"
RETRAIN_EVENTS: tuple[str, ...] = (DRIFT_EVENT, DEGRADED_EVENT)
DEFAULT_DEPLOYMENT = "ml-pipeline/weekly"
DEFAULT_COOLDOWN = timedelta(hours=6)
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
ZOMBIE_AUTOMATION = "mlre-crash-zombie-flow-runs"
MISSED_HEARTBEATS = 3  # as in Prefect's docs: one late heartbeat on a busy node is not a crash
ZOMBIE_MESSAGE = "No heartbeat from this flow run for {window}: its process is gone (zombie)."
_REASONS_MAX = 20  # event payloads are stored with every event: keep them small
DEFAULT_REMEDIATION_COOLDOWN = timedelta(minutes=30)
# The whole alert event payload becomes the `alert` parameter (json + jinja: a dict, not text).
ALERT_PARAMETER = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": "{{ event.payload | tojson }}"},
}


# A Crashed flow run of a deployment, as the alert a remediation takes. The problem key is the
# deployment: a deployment whose re-runs crash again escalates after the repeat limit.
CRASHED_EVENT = "prefect.flow-run.Crashed"
CRASHED_ALERT_TEMPLATE = (
    "{% set deployment = event.resource_in_role['deployment'] %}"
    "{{ {'alertname': '" + remediation.CRASHED_ALERT + "', 'status': 'firing', "
    "'severity': 'ticket', 'problem': deployment.id, "
    "'fingerprint': event.resource.id, 'starts_at': event.occurred.isoformat(), "
    "'runbook_url': 'runbooks/PipelineFlowRunBudgetBurn.md', "
    "'labels': {'alertname': '" + remediation.CRASHED_ALERT + "', "
    "'flow_run_id': event.resource.id, 'flow_run': event.resource.name, "
    "'deployment_id': deployment.id, 'deployment': deployment.name}, "
    "'annotations': {'summary': 'flow run ' ~ event.resource.name ~ ' crashed'}} | tojson }}"
)
CRASHED_ALERT_PARAMETER = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": CRASHED_ALERT_TEMPLATE},
}


class AutomationError(MlreError):
    """The retrain automation cannot be set up (deployment missing, bad cooldown)."""


def model_resource_id(model_name: str) -> str:
    """The Prefect resource id of a registered model: what events name and triggers match."""
    return f"mlre.model.{model_name}"


def model_resource(model_name: str, version: str | None) -> dict[str, str]:
    """Resource labels of an event about one model (version when known)."""
    resource = {
        "prefect.resource.id": model_resource_id(model_name),
        "prefect.resource.name": model_name,
        "mlre.model.name": model_name,
    }
    if version is not None:
        resource["mlre.model.version"] = str(version)
    return resource


def emit_model_event(
    event: str,
    model_name: str,
    version: str | None,
    reasons: Sequence[str],
    details: Mapping[str, Any] | None = None,
) -> Any:
    """Emit a verdict event (related to the current flow run, if any); returns the Event."""
    from prefect.events import emit_event

    if event not in RETRAIN_EVENTS:
        raise AutomationError(f"Unknown mlre event {event!r}; use one of {RETRAIN_EVENTS}.")
    payload = {"reasons": list(reasons)[:_REASONS_MAX], **dict(details or {})}
    return emit_event(event=event, resource=model_resource(model_name, version), payload=payload)


def automation_name(model_name: str) -> str:
    """The one retrain automation of a model (its name is the idempotency key)."""
    return f"mlre-retrain-{model_name}"


def retrain_automation(
    model_name: str,
    deployment_id: Any,
    cooldown: timedelta = DEFAULT_COOLDOWN,
    *,
    name: str | None = None,
    events: Sequence[str] = RETRAIN_EVENTS,
) -> Any:
    """Automation: a drift or degradation event of `model_name` runs the deployment, once per
    cooldown (see the module docstring for the exact guarantee)."""
    from prefect.automations import Automation, EventTrigger, Posture, RunDeployment

    if cooldown < timedelta(0):
        raise AutomationError(f"cooldown must not be negative, got {cooldown}.")
    return Automation(
        name=name or automation_name(model_name),
        description=(
            f"Retrain {model_name} when {' or '.join(events)} arrives; at most one run per "
            f"{cooldown} bucket (managed by flows.automations.ensure_automations)."
        ),
        enabled=True,
        trigger=EventTrigger(
            expect=set(events),
            match={"prefect.resource.id": model_resource_id(model_name)},
            posture=Posture.Reactive,
            threshold=1,
            within=cooldown,
        ),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id)],
    )


def remediation_automation_name(action: str) -> str:
    return f"mlre-remediate-{action}"


def remediation_automation(action: str, deployment_id: Any, cooldown: timedelta) -> Any:
    """Automation: an `mlre.alert.firing` event whose alert names `action` as its remediation
    runs `remediate/<action>` with the alert, at most once per cooldown per alert instance (one
    trigger bucket per alert resource, as for retraining: see the module docstring)."""
    from prefect.automations import EventTrigger, Posture

    remediation.check_action(action)
    if cooldown <= timedelta(0):
        raise AutomationError(f"remediation cooldown must be positive, got {cooldown}.")
    trigger = EventTrigger(
        expect={FIRING_EVENT},
        match={"mlre.alert.remediation": action},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=cooldown,
    )
    when = f"an alert whose remediation is {action!r} fires"
    return _remediating(
        action, deployment_id, trigger, ALERT_PARAMETER, when=when, limit=f"{cooldown} per alert"
    )


def crashed_run_automation(deployment_id: Any, cooldown: timedelta) -> Any:
    """Automation: a deployment's flow run turned Crashed (its process died; the zombie
    automation or the worker said so) runs `remediate/rerun-crashed` with it, once per run."""
    from prefect.automations import EventTrigger, Posture

    trigger = EventTrigger(
        expect={CRASHED_EVENT},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "deployment"},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=cooldown,
    )
    when = "a deployment's flow run crashes"
    limit = "crashed run; re-runs that keep crashing escalate"
    return _remediating(
        "rerun-crashed", deployment_id, trigger, CRASHED_ALERT_PARAMETER, when=when, limit=limit
    )


def _remediating(
    action: str, deployment_id: Any, trigger: Any, alert: dict[str, Any], *, when: str, limit: str
) -> Any:
    """The automation that runs `remediate/<action>` with the `alert` its trigger renders."""
    from prefect.automations import Automation, RunDeployment

    return Automation(
        name=remediation_automation_name(action),
        description=(
            f"Run {remediation.deployment_name(action)} when {when} "
            f"({remediation.ACTIONS[action]}); at most once per {limit} "
            "(managed by flows.automations)."
        ),
        enabled=True,
        trigger=trigger,
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                parameters={"action": action, "alert": alert},
            )
        ],
    )


def zombie_window(heartbeat_s: int) -> timedelta:
    """How long a flow run may stay silent before it counts as a zombie."""
    if heartbeat_s < MIN_FLOW_HEARTBEAT_S:
        raise AutomationError(
            f"flow heartbeat must be at least {MIN_FLOW_HEARTBEAT_S} s (Prefect's minimum), got "
            f"{heartbeat_s}; set MLRE_FLOW_HEARTBEAT_S."
        )
    return timedelta(seconds=heartbeat_s * MISSED_HEARTBEATS)


def zombie_automation(heartbeat_s: int) -> Any:
    """Automation: a flow run silent for `zombie_window(heartbeat_s)` after a heartbeat is set
    Crashed (see the module docstring)."""
    from prefect.automations import Automation, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState

    window = zombie_window(heartbeat_s)
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"Mark a flow run Crashed when it sends no event for {window} after a heartbeat "
            f"({MISSED_HEARTBEATS} missed heartbeats of {heartbeat_s} s; managed by "
            "flows.automations.ensure_automations)."
        ),
        enabled=True,
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT},
            # Any flow-run event answers a heartbeat: the next heartbeat, or a state change
            # (Completed, Failed, Cancelled, Crashed, Paused...), so a finished run never fires.
            expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=ZOMBIE_MESSAGE.format(window=window)
            )
        ],
    )


def _core(automation: Any) -> Any:
    """The automation as the API's create/update body (no id)."""
    from prefect.events.schemas.automations import AutomationCore

    return AutomationCore(**automation.model_dump(exclude={"id"}))


def _spec(automation: Any) -> dict[str, Any]:
    """What makes two automations the same, without server-assigned ids."""
    data = _core(automation).model_dump(mode="json", exclude={"owner_resource"})
    data["trigger"].pop("id", None)
    for key in ("expect", "after", "for_each"):  # sets: their JSON order is arbitrary
        data["trigger"][key] = sorted(data["trigger"].get(key) or [])
    return data


def _ensure(client: Any, wanted: Any) -> Any:
    """Create `wanted`, or update the one of the same name if it differs; returns what is stored.

    An unchanged automation is left alone: updating it would reset its trigger buckets (a
    running cooldown, a zombie window). Duplicates by name (e.g. from a race) are deleted.
    """
    from prefect.events.schemas.automations import AutomationCore

    existing = client.read_automations_by_name(wanted.name)
    for extra in existing[1:]:
        client.delete_automation(extra.id)
    if not existing:
        wanted.id = client.create_automation(_core(wanted))
        return wanted
    if _spec(existing[0]) == _spec(wanted):
        return existing[0]
    # PUT refuses `owner_resource` (a create-only field); send it unset, as Prefect does.
    body = AutomationCore(**wanted.model_dump(exclude={"id", "owner_resource"}))
    client.update_automation(existing[0].id, body)
    wanted.id = existing[0].id
    return wanted


def _deployment_id(client: Any, name: str, hint: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name).id
    except ObjectNotFound as exc:
        raise AutomationError(
            f"Deployment {name!r} does not exist on {client.api_url}; {hint} "
            "(prefect --no-prompt deploy --all), then call ensure_automations again."
        ) from exc


def ensure_remediation_automations(
    cooldown: timedelta = DEFAULT_REMEDIATION_COOLDOWN, actions: Sequence[str] | None = None
) -> list[Any]:
    """Create or update the automation of every remediation action (deployments must exist)."""
    from prefect.client.orchestration import get_client

    def wanted(client: Any, action: str) -> Any:
        deployment = _deployment_id(
            client, remediation.deployment_name(action), "deploy the remediations"
        )
        if action == "rerun-crashed":  # started by Prefect's own Crashed event, not an alert
            return crashed_run_automation(deployment, cooldown)
        return remediation_automation(action, deployment, cooldown)

    with get_client(sync_client=True) as client:
        return [
            _ensure(client, wanted(client, action)) for action in actions or remediation.ACTIONS
        ]


def ensure_automations(
    deployment_name: str = DEFAULT_DEPLOYMENT,
    cooldown: timedelta = DEFAULT_COOLDOWN,
    model_name: str | None = None,
    heartbeat_s: int | None = None,
) -> list[Any]:
    """Create or update, idempotently, on the current Prefect server: the retrain automation
    of `model_name`, then the zombie-run automation (returned in that order)."""
    from prefect.client.orchestration import get_client

    from mlre.settings import get_settings

    if cooldown <= timedelta(0):
        raise AutomationError(
            f"cooldown must be positive (got {cooldown}); it is what prevents retrain storms."
        )
    settings = get_settings()
    model_name = model_name or settings.model_name
    zombie = zombie_automation(heartbeat_s or settings.flow_heartbeat_s)
    with get_client(sync_client=True) as client:
        deployment_id = _deployment_id(client, deployment_name, "deploy the retraining pipeline")
        retrain = retrain_automation(model_name, deployment_id, cooldown)
        return [_ensure(client, retrain), _ensure(client, zombie)]

"""Alertmanager webhook payloads and the Prefect events they become: the pure half of the relay.

Alertmanager posts a group of alerts (webhook payload version 4); each alert that fired or
resolved becomes one Prefect event:

- `mlre.alert.firing` or `mlre.alert.resolved`, on `mlre.alert.<alertname>.<problem>`, where
  the problem key hashes the alert's labels without its severity: the page and the ticket of one
  SLO burning for one view are one problem, so automations keep one cooldown per problem and
  remediate it once. Labels automations match on: `mlre.alert.name`, `mlre.alert.severity` and
  `mlre.alert.remediation` (the rule's `remediation` annotation, which the runbook documents);
- an id derived from (fingerprint, startsAt, status): Alertmanager re-sends a firing alert every
  repeat interval and retries failed deliveries, and every copy maps to the same id, so the
  relay's ledger and Prefect's own seen-events check start nothing twice. A new firing of the same
  alert (a new startsAt) is a new event.

Validation is all-or-nothing: a payload with one malformed alert emits none of its alerts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlre.errors import MlreError

FIRING_EVENT = "mlre.alert.firing"
RESOLVED_EVENT = "mlre.alert.resolved"
ESCALATED_EVENT = "mlre.alert.escalated"
ALERT_EVENTS = (FIRING_EVENT, RESOLVED_EVENT)
NO_REMEDIATION = "none"
# uuid5 namespace of alert event ids (fixed forever: changing it would re-emit every alert).
EVENT_NAMESPACE = uuid.UUID("6f0d1c52-2f8e-4a61-9d4e-6a3f4f8e2b17")
MAX_ALERTS = 1000  # Alertmanager's max_alerts is unlimited by default; refuse absurd groups
MAX_BODY_BYTES = 1 << 20
_PAYLOAD_TEXT_MAX = 2000  # per label/annotation value kept in an event payload


class AlertPayloadError(MlreError):
    """A webhook body that is not an Alertmanager v4 payload; nothing was emitted."""


class Alert(BaseModel):
    """One alert of a webhook payload (Alertmanager's `alerts[]` item)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime  # Alertmanager's field names, as it sends them
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64)

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("labels.alertname is missing or empty (every alert has one)")
        return labels

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must carry a timezone (Alertmanager sends RFC 3339)")
        return value

    @property
    def name(self) -> str:
        return self.labels["alertname"]

    @property
    def remediation(self) -> str:
        """The deployment key the rule's `remediation` annotation names ("none": page only)."""
        return self.annotations.get("remediation", "").strip() or NO_REMEDIATION


class WebhookPayload(BaseModel):
    """Alertmanager's webhook body (version 4)."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    alerts: list[Alert] = Field(min_length=1, max_length=MAX_ALERTS)
    externalURL: str = ""


def _where(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "body"


def parse_webhook(body: bytes) -> WebhookPayload:
    """The validated payload, or an AlertPayloadError naming the field and what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        raise AlertPayloadError(
            f"webhook body is {len(body)} bytes, over the {MAX_BODY_BYTES} limit; lower "
            "max_alerts in the Alertmanager receiver."
        )
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlertPayloadError(
            f"webhook body is not JSON ({exc}); send Alertmanager's webhook payload (version 4)."
        ) from exc
    if not isinstance(data, dict):
        raise AlertPayloadError(
            f"webhook body is a JSON {type(data).__name__}, not an object; send Alertmanager's "
            "webhook payload (version 4)."
        )
    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_where(error['loc'])}: {error['msg']}" for error in exc.errors()[:5]
        )
        raise AlertPayloadError(
            f"not an Alertmanager v4 webhook payload: {problems}. Nothing was emitted."
        ) from exc


def event_id(alert: Alert) -> uuid.UUID:
    """The same id for every delivery of one alert state (see the module docstring)."""
    key = f"{alert.fingerprint}|{alert.startsAt.astimezone(UTC).isoformat()}|{alert.status}"
    return uuid.uuid5(EVENT_NAMESPACE, key)


SEVERITY_LABELS = frozenset({"severity", "sloth_severity"})


def problem_key(labels: Mapping[str, str]) -> str:
    """What is wrong, whatever the severity: a short hash of the labels without severity."""
    kept = sorted((k, v) for k, v in labels.items() if k not in SEVERITY_LABELS)
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def resource_id(alert_name: str, problem: str) -> str:
    return f"mlre.alert.{alert_name}.{problem}"


def _clip(values: Mapping[str, str]) -> dict[str, str]:
    return {key: value[:_PAYLOAD_TEXT_MAX] for key, value in values.items()}


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def alert_event(alert: Alert, received_at: datetime) -> dict[str, Any]:
    """The Prefect event (JSON for POST /api/events) of one alert state change.

    `occurred` is when the relay received it: a trigger drops events stamped before its current
    bucket, and an alert's startsAt can be hours old when it is re-sent. startsAt is in the payload.
    """
    event = FIRING_EVENT if alert.status == "firing" else RESOLVED_EVENT
    severity = alert.labels.get("severity", "")
    problem = problem_key(alert.labels)
    return {
        "id": str(event_id(alert)),
        "occurred": received_at.astimezone(UTC).isoformat(),
        "event": event,
        "resource": {
            "prefect.resource.id": resource_id(alert.name, problem),
            "prefect.resource.name": alert.name,
            "mlre.alert.name": alert.name,
            "mlre.alert.severity": severity,
            "mlre.alert.remediation": alert.remediation,
        },
        "related": [],
        "payload": {
            "alertname": alert.name,
            "status": alert.status,
            "severity": severity,
            "remediation": alert.remediation,
            "fingerprint": alert.fingerprint,
            "problem": problem,
            "starts_at": _iso(alert.startsAt),
            "ends_at": _iso(alert.endsAt) if alert.status == "resolved" else None,
            "labels": _clip(alert.labels),
            "annotations": _clip(alert.annotations),
            "runbook_url": alert.annotations.get("runbook_url", ""),
            "generator_url": alert.generatorURL,
        },
    }


def payload_events(payload: WebhookPayload, received_at: datetime) -> list[dict[str, Any]]:
    """One event per alert of the payload, in the payload's order."""
    return [alert_event(alert, received_at) for alert in payload.alerts]

"""Alertmanager payloads -> Prefect events: validation, ids, and what an event carries."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from mlre.alerts import (
    FIRING_EVENT,
    RESOLVED_EVENT,
    AlertPayloadError,
    event_id,
    parse_webhook,
    payload_events,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def alert(**overrides: Any) -> dict[str, Any]:
    base = {
        "status": "firing",
        "labels": {
            "alertname": "FeatureFreshnessBudgetBurn",
            "severity": "page",
            "feature_view": "customer_daily_stats_fv",
        },
        "annotations": {
            "summary": "features freshness: burning",
            "runbook_url": "runbooks/FeatureFreshnessBudgetBurn.md",
            "remediation": "backfill-features",
        },
        "startsAt": "2026-12-04T11:58:00.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
        "fingerprint": "a1b2c3d4e5f60718",
    }
    base.update(overrides)
    return base


def payload(*alerts: dict[str, Any], **overrides: Any) -> bytes:
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="FeatureFreshnessBudgetBurn"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "page",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts) or [alert()],
    }
    body.update(overrides)
    return json.dumps(body).encode()


def test_a_firing_alert_becomes_one_event_automations_can_match() -> None:
    (event,) = payload_events(parse_webhook(payload()), NOW)
    assert event["event"] == FIRING_EVENT
    assert event["occurred"] == NOW.isoformat()
    problem = event["payload"]["problem"]
    assert event["resource"] == {
        "prefect.resource.id": f"mlre.alert.FeatureFreshnessBudgetBurn.{problem}",
        "prefect.resource.name": "FeatureFreshnessBudgetBurn",
        "mlre.alert.name": "FeatureFreshnessBudgetBurn",
        "mlre.alert.severity": "page",
        "mlre.alert.remediation": "backfill-features",
    }
    body = event["payload"]
    assert body["labels"]["feature_view"] == "customer_daily_stats_fv"
    assert body["runbook_url"] == "runbooks/FeatureFreshnessBudgetBurn.md"
    assert body["starts_at"] == "2026-12-04T11:58:00.123000+00:00"
    assert body["ends_at"] is None  # Alertmanager's zero time while firing is not a time


def test_redeliveries_share_an_id_and_a_new_firing_or_a_resolve_does_not() -> None:
    first = parse_webhook(payload()).alerts[0]
    again = parse_webhook(payload()).alerts[0]
    assert event_id(first) == event_id(again)
    refired = parse_webhook(payload(alert(startsAt="2026-12-04T13:00:00Z"))).alerts[0]
    resolved = parse_webhook(
        payload(alert(status="resolved", endsAt="2026-12-04T12:30:00Z"), status="resolved")
    ).alerts[0]
    assert len({event_id(first), event_id(refired), event_id(resolved)}) == 3
    (event,) = payload_events(parse_webhook(payload(alert(status="resolved"))), NOW)
    assert event["event"] == RESOLVED_EVENT


def test_the_page_and_the_ticket_of_one_burn_are_one_problem() -> None:
    page = alert()
    ticket = alert(labels={**page["labels"], "severity": "ticket"}, fingerprint="0f0f0f0f")
    other_view = alert(labels={**page["labels"], "feature_view": "other_fv"}, fingerprint="1e1e")
    events = payload_events(parse_webhook(payload(page, ticket, other_view)), NOW)
    resources = [e["resource"]["prefect.resource.id"] for e in events]
    assert resources[0] == resources[1] != resources[2]
    assert len({e["id"] for e in events}) == 3  # still three alerts, three events


def test_an_alert_without_remediation_pages_only() -> None:
    quiet = alert(annotations={"summary": "x"})
    (event,) = payload_events(parse_webhook(payload(quiet)), NOW)
    assert event["resource"]["mlre.alert.remediation"] == "none"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (payload(version="3"), "version"),
        (payload(alerts=[]), "alerts"),
        (payload(alert(), alert(fingerprint="")), "alerts[1].fingerprint"),
        (payload(alert(labels={"severity": "page"})), "alerts[0].labels"),
        (payload(alert(status="pending")), "alerts[0].status"),
        (payload(alert(startsAt="yesterday")), "alerts[0].startsAt"),
        (payload(alert(startsAt="2026-12-04T11:58:00")), "timezone"),
    ],
    ids=[
        "not-json", "not-object", "version", "no-alerts", "empty-fingerprint", "no-alertname",
        "bad-status", "bad-time", "naive-time",
    ],
)  # fmt: skip
def test_malformed_payloads_are_refused_naming_the_field(body: bytes, named: str) -> None:
    with pytest.raises(AlertPayloadError) as refused:
        parse_webhook(body)
    assert named in str(refused.value)


def test_one_bad_alert_refuses_the_whole_payload() -> None:
    good, bad = alert(), copy.deepcopy(alert(fingerprint=""))
    with pytest.raises(AlertPayloadError, match="Nothing was emitted"):
        parse_webhook(payload(good, bad))


def test_an_oversized_body_is_refused_before_parsing() -> None:
    huge = payload(alert(annotations={"description": "x" * (1 << 20)}))
    with pytest.raises(AlertPayloadError, match="over the"):
        parse_webhook(huge)


def test_long_label_values_are_clipped_in_the_event() -> None:
    long = alert(annotations={"description": "y" * 5000, "remediation": "backfill-features"})
    (event,) = payload_events(parse_webhook(payload(long)), NOW)
    assert len(event["payload"]["annotations"]["description"]) == 2000

"""The alert relay between a real Alertmanager and a real Prefect server: one alert, one
remediation run; re-deliveries start nothing; a malformed or unauthenticated payload is refused
and emits nothing.

"Nothing started" is a checked fact, not a sleep: a witness automation on the same events with
no cooldown runs its own deployment for every event the trigger service processes, so once the
witness has seen a later event, every earlier one has been evaluated too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from flows import automations
from flows.remediation import remediate
from mlre import local_platform
from mlre.alerts import event_id, parse_webhook
from mlre.monitoring_config import DRILL, MonitoringSetup
from mlre.relay_config import token_file
from mlre.settings import Settings
from mlre.supervisor import free_port
from mlre.waiting import wait_until
from tests.integration.test_monitoring_stack import require_monitoring_binaries
from tests.support.prefect_runs import deployment_runs

pytestmark = pytest.mark.integration
ACTION = "backfill-features"


@dataclass
class Relayed:
    settings: Settings
    token: str
    deployment: Any
    witness: Any

    @property
    def relay(self) -> str:
        return f"http://127.0.0.1:{self.settings.relay_port}/alerts"

    @property
    def alertmanager(self) -> str:
        return f"http://127.0.0.1:{self.settings.alertmanager_port}"

    def post(self, body: bytes, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.post(self.relay, content=body, headers=headers, timeout=10)

    def runs_for(self, fingerprint: str, deployment: Any = None) -> list[Any]:
        """Runs of the remediation (or the witness) started for one alert instance."""
        return [
            run
            for run in deployment_runs(deployment or self.deployment)
            if run.parameters.get("alert", {}).get("fingerprint") == fingerprint
        ]

    def witnessed(self) -> list[str]:
        """The alert fingerprint of every witness run: one per event the triggers processed."""
        runs = deployment_runs(self.witness)
        return sorted(run.parameters.get("alert", {}).get("fingerprint", "?") for run in runs)

    def await_witness(self, fingerprint: str) -> None:
        """Until the trigger service has processed this alert's event (and those before it)."""
        wait_until(
            lambda: self.runs_for(fingerprint, self.witness),
            timeout_s=60,
            what=f"the witness run of alert {fingerprint}",
            interval_s=0.5,
        )


@pytest.fixture(scope="module")
def relayed(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relayed]:
    """Relay and Alertmanager through `mlre up`'s code path (drill timing), talking to the
    session's Prefect server; the remediation automation and a witness on its events."""
    from prefect.settings import get_current_settings

    require_monitoring_binaries()
    # The harness sets Prefect's settings, not os.environ (which holds the default platform's).
    prefect_port = urlsplit(str(get_current_settings().api.url)).port
    assert prefect_port is not None
    settings = Settings(
        home=tmp_path_factory.mktemp("relay") / "home",
        prefect_port=prefect_port,
        relay_port=free_port(),
        alertmanager_port=free_port(),
        prometheus_port=free_port(),
        pushgateway_port=free_port(),
        monitoring=True,
        alert_relay=True,
        alert_webhook_url="",
        prometheus_url="",
        alertmanager_url="",
        pushgateway_url="",
    )
    deployment = remediate.to_deployment(name=ACTION, parameters={"action": ACTION}).apply()
    witness = remediate.to_deployment(name=f"witness-{uuid.uuid4().hex[:6]}").apply()
    (automation,) = automations.ensure_remediation_automations(
        timedelta(minutes=30), actions=[ACTION]
    )
    assert automation.trigger.within == timedelta(minutes=30)
    spy = automations.remediation_automation(ACTION, witness, timedelta(minutes=30))
    spy.name = f"witness-{ACTION}-{uuid.uuid4().hex[:6]}"
    spy.trigger.within = timedelta(0)
    spy.create()
    try:
        rows = local_platform.up(
            settings, only=("relay", "alertmanager"), monitoring=MonitoringSetup(timing=DRILL)
        )
        assert {r.name: r.health for r in rows if r.name in {"relay", "alertmanager"}} == {
            "relay": "healthy",
            "alertmanager": "healthy",
        }
        yield Relayed(settings, token_file(settings).read_text().strip(), deployment, witness)
    finally:
        local_platform.down(settings)
        spy.delete()


def _fire(relayed: Relayed, view: str) -> dict[str, Any]:
    """Post one firing alert to Alertmanager (as Prometheus would); its stored form."""
    labels = {
        "alertname": "FeatureFreshnessBudgetBurn",
        "severity": "page",
        "sloth_service": "features",
        "sloth_slo": "freshness",
        "feature_view": view,
    }
    annotations = {"remediation": ACTION, "runbook_url": "runbooks/FeatureFreshnessBudgetBurn.md"}
    sent = httpx.post(
        f"{relayed.alertmanager}/api/v2/alerts",
        json=[{"labels": labels, "annotations": annotations}],
        timeout=10,
    )
    assert sent.status_code == 200, sent.text

    def stored() -> dict[str, Any] | None:
        alerts = httpx.get(f"{relayed.alertmanager}/api/v2/alerts", timeout=10).json()
        return next((a for a in alerts if a["labels"].get("feature_view") == view), None)

    return wait_until(stored, timeout_s=30, what="the alert in Alertmanager", interval_s=0.2)


def _webhook_body(alert: dict[str, Any]) -> bytes:
    """A webhook payload of one firing alert, as Alertmanager sends it."""
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "page",
            "groupKey": "{}:{}",
            "alerts": [
                {
                    "status": "firing",
                    "labels": alert["labels"],
                    "annotations": alert["annotations"],
                    "startsAt": alert["startsAt"],
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    "fingerprint": alert["fingerprint"],
                }
            ],
        }
    ).encode()


def test_one_alert_starts_one_remediation_run_with_the_alert(relayed: Relayed) -> None:
    view = f"view_{uuid.uuid4().hex[:6]}"
    alert = _fire(relayed, view)

    wait_until(lambda: relayed.runs_for(alert["fingerprint"]), timeout_s=60,
               what="the remediation run", interval_s=0.5)  # fmt: skip
    (run,) = relayed.runs_for(alert["fingerprint"])
    assert run.parameters["action"] == ACTION
    given = run.parameters["alert"]
    assert given["alertname"] == "FeatureFreshnessBudgetBurn"
    assert given["labels"]["feature_view"] == view
    assert given["runbook_url"] == "runbooks/FeatureFreshnessBudgetBurn.md"
    assert given["status"] == "firing"
    relayed.await_witness(alert["fingerprint"])
    assert relayed.witnessed().count(alert["fingerprint"]) == 1


def test_redelivered_alerts_start_nothing_twice(relayed: Relayed) -> None:
    view = f"view_{uuid.uuid4().hex[:6]}"
    alert = _fire(relayed, view)
    (run,) = wait_until(lambda: relayed.runs_for(alert["fingerprint"]), timeout_s=60,
                        what="the first remediation run", interval_s=0.5)  # fmt: skip
    # What Alertmanager delivered, as the run received it (its API rounds startsAt to ms).
    given = run.parameters["alert"]
    body = _webhook_body({**given, "startsAt": given["starts_at"]})
    expected_id = str(event_id(parse_webhook(body).alerts[0]))

    for _ in range(3):  # Alertmanager's retries and repeat notifications look like this
        answer = relayed.post(body)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "received": 1,
            "emitted": 0,
            "duplicates": 1,
            "event_ids": [expected_id],
        }

    # Once a later alert's event is processed, so were any re-emitted ones: the witness (no
    # cooldown) would show a second run for the first alert, the remediation too.
    later = _fire(relayed, f"view_{uuid.uuid4().hex[:6]}")
    relayed.await_witness(later["fingerprint"])
    assert relayed.witnessed().count(alert["fingerprint"]) == 1
    wait_until(lambda: relayed.runs_for(later["fingerprint"]), timeout_s=60,
               what="the later alert's remediation run", interval_s=0.5)  # fmt: skip
    assert len(relayed.runs_for(alert["fingerprint"])) == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"version": "4", "status": "firing", "alerts": [{"labels": {}}]}', 400,
         "alerts[0].status"),
        (b"<html>", 400, "not JSON"),
    ],
    ids=["missing-fields", "not-json"],
)  # fmt: skip
def test_malformed_payloads_get_a_400_and_emit_nothing(
    relayed: Relayed, body: bytes, status: int, words: str
) -> None:
    before = relayed.witnessed()
    answer = relayed.post(body)
    assert answer.status_code == status
    assert words in answer.json()["detail"]
    later = _fire(relayed, f"view_{uuid.uuid4().hex[:6]}")
    relayed.await_witness(later["fingerprint"])
    # Only the later alert became an event (Alertmanager's re-sends of its group are dupes).
    assert relayed.witnessed() == sorted([*before, later["fingerprint"]])


def test_a_wrong_or_missing_token_is_refused(relayed: Relayed) -> None:
    body = _webhook_body(
        {
            "labels": {"alertname": "X", "severity": "page"},
            "annotations": {"remediation": ACTION},
            "startsAt": datetime.now(UTC).isoformat(),
            "fingerprint": uuid.uuid4().hex[:16],
        }
    )
    assert relayed.post(body, token="wrong").status_code == 401
    anonymous = httpx.post(relayed.relay, content=body, timeout=10)
    assert anonymous.status_code == 401
    assert "bearer token" in anonymous.json()["detail"]
    metrics = httpx.get(relayed.relay.replace("/alerts", "/metrics"), timeout=10).text
    assert 'mlre_relay_refused_requests_total{status="401"} 2.0' in metrics


def test_the_token_file_is_private(relayed: Relayed) -> None:
    assert Path(token_file(relayed.settings)).stat().st_mode & 0o077 == 0

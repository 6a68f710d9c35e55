"""The relay's HTTP contract with Alertmanager, over its app (Prefect's side: the integration
test against a real server). Emission goes through a recorder that can be told to fail."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from mlre.relay_config import RelayConfig, prefect_headers
from mlre.settings import Settings
from relay.app import EmitError, create_app
from relay.ledger import Ledger
from tests.unit.test_alerts import alert, payload

pytestmark = pytest.mark.unit
TOKEN = "s3cret-token"


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.failing = False

    def __call__(self, events: Sequence[dict[str, Any]]) -> None:
        if self.failing:
            raise EmitError("Prefect at http://x/api did not answer")
        self.batches.append(list(events))


@pytest.fixture
def relay(tmp_path: Path) -> tuple[TestClient, Recorder, Ledger]:
    recorder = Recorder()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    app = create_app(
        Settings(home=tmp_path), RelayConfig(token=SecretStr(TOKEN)), emit=recorder, ledger=ledger
    )
    return TestClient(app), recorder, ledger


def _post(client: TestClient, body: bytes, token: str = TOKEN) -> Any:
    return client.post("/alerts", content=body, headers={"Authorization": f"Bearer {token}"})


def test_each_alert_is_emitted_once_even_when_repeated_in_one_payload(relay) -> None:
    client, recorder, ledger = relay
    answer = _post(client, payload(alert(), alert(), alert(fingerprint="other")))
    assert answer.status_code == 200
    assert answer.json()["emitted"] == 2
    assert answer.json()["duplicates"] == 1
    assert [len(batch) for batch in recorder.batches] == [2]
    assert _post(client, payload()).json()["emitted"] == 0
    assert ledger.count() == 2


def test_a_prefect_outage_is_a_503_and_the_retry_emits(relay) -> None:
    client, recorder, ledger = relay
    recorder.failing = True
    refused = _post(client, payload())
    assert refused.status_code == 503  # Alertmanager retries 5xx
    assert "will retry" in refused.json()["detail"]
    assert ledger.count() == 0  # nothing recorded: the retry must emit
    recorder.failing = False
    assert _post(client, payload()).json()["emitted"] == 1
    assert len(recorder.batches) == 1


def test_refusals_change_nothing(relay) -> None:
    client, recorder, ledger = relay
    assert _post(client, payload(), token="nope").status_code == 401
    bad = _post(client, json.dumps({"version": "4"}).encode())
    assert bad.status_code == 400
    assert "status" in bad.json()["detail"]
    assert (recorder.batches, ledger.count()) == ([], 0)
    metrics = client.get("/metrics").text
    assert 'mlre_relay_refused_requests_total{status="401"} 1.0' in metrics
    assert 'mlre_relay_refused_requests_total{status="400"} 1.0' in metrics


def test_the_ledger_outlives_the_relay(tmp_path: Path) -> None:
    first = Ledger(tmp_path / "l.sqlite")
    first.record([{"id": "e1", "event": "x", "payload": {"alertname": "A", "fingerprint": "f"}}])
    first.close()
    assert Ledger(tmp_path / "l.sqlite").unseen(["e1", "e2"]) == {"e2"}


def test_no_token_no_relay(tmp_path: Path) -> None:
    from mlre.errors import ConfigError

    with pytest.raises(ConfigError, match="MLRE_RELAY_TOKEN"):
        create_app(Settings(home=tmp_path), RelayConfig(token=SecretStr("")), emit=Recorder())


def test_prefect_credentials_are_sent_as_prefect_expects() -> None:
    assert prefect_headers(RelayConfig(prefect_api_key=SecretStr("pnu_x"))) == {
        "Authorization": "Bearer pnu_x"
    }
    basic = prefect_headers(RelayConfig(prefect_api_auth_string=SecretStr("admin:pw")))
    assert basic == {"Authorization": "Basic YWRtaW46cHc="}
    assert prefect_headers(RelayConfig()) == {}

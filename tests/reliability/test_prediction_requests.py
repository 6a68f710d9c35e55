"""Bad /predict requests to the online service (serving/), in-process through FastAPI's TestClient.

The service runs against the platform: its online store and its champion from the real MLflow
server. A refused request must get the exact status code, a body naming the field and what it
should be, and leave the stores untouched: no prediction-log row written or even queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from mlre.serving_config import ServingConfig
from mlre.settings import get_settings
from serving.app import create_app
from tests.reliability.harness import Platform, assert_message, assert_unchanged, capture

pytestmark = pytest.mark.integration
INPUT_PATH = "prediction requests (/predict)"
MAX_INSTANCES = 4


@pytest.fixture(scope="module")
def service(platform_exported: Platform) -> Iterator[TestClient]:
    """The app with the platform's champion loaded; no poller or log flush during the module."""
    config = ServingConfig(
        model_name=platform_exported.model_name,
        max_instances=MAX_INSTANCES,
        poll_interval_s=3600,
        log_flush_interval_s=3600,
    )
    # What a real client sees: a server error is a 500 response, not an exception here.
    app = create_app(get_settings(), config)
    with TestClient(app, raise_server_exceptions=False) as client:
        champion = client.app.state.service.holder.current.champion
        assert champion is not None, "the service must serve the champion for these cases"
        assert champion.version == platform_exported.versions["champion"]
        yield client


def _instance(customer_id: object = 1001, amount: object = 12.5) -> dict[str, object]:
    return {"customer_id": customer_id, "amount": amount}


@dataclass(frozen=True)
class Refusal:
    """What a refused request must get: the status, fields named in the body, the fix."""

    status: int
    names: tuple[str, ...]
    fix: str


TOO_MANY = [_instance(1001 + i) for i in range(MAX_INSTANCES + 1)]
CASES = [
    pytest.param({"instances": [{"amount": 12.5}]},
                 Refusal(422, ("customer_id",), "Field required"), id="missing_key"),
    pytest.param({"instances": [{"customer_id": 1001}]},
                 Refusal(422, ("amount",), "Field required"), id="missing_amount"),
    pytest.param({"instances": [_instance(customer_id="abc")]},
                 Refusal(422, ("customer_id", "abc"), "valid integer"), id="key_of_wrong_type"),
    pytest.param({"instances": [_instance(amount="lots")]},
                 Refusal(422, ("amount", "lots"), "valid number"), id="amount_of_wrong_type"),
    pytest.param({"instances": [_instance(amount=-3.0)]},
                 Refusal(422, ("amount",), "greater than or equal to 0"), id="negative_amount"),
    pytest.param('{"instances": [{"customer_id": 1001, "amount": Infinity}]}',
                 Refusal(422, ("amount",), "finite number"), id="non_finite_amount"),
    pytest.param({"instances": [{**_instance(), "request_id": "x" * 500}]},
                 Refusal(422, ("request_id",), "at most 128 characters"),
                 id="oversized_request_id"),
    pytest.param({"instances": []},
                 Refusal(422, ("instances",), "at least 1 item"), id="empty_batch"),
    pytest.param({"instances": _instance()},
                 Refusal(422, ("instances",), "valid list"), id="instances_not_a_list"),
    pytest.param("customer_id=1001&amount=12.5",
                 Refusal(422, ("body",), "JSON decode error"), id="body_not_json"),
    pytest.param({"instances": TOO_MANY},
                 Refusal(413, (f"{len(TOO_MANY)} instances", f"limit is {MAX_INSTANCES}"),
                         "Split the batch"), id="oversized_batch"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), CASES)
def test_bad_request_is_refused(
    platform: Platform, service: TestClient, body: dict[str, object] | str, expected: Refusal
) -> None:
    log = service.app.state.service.log
    before = capture(platform, pending_log_rows=log.pending)

    if isinstance(body, str):
        headers = {"Content-Type": "application/json"}
        response = service.post("/predict", content=body, headers=headers)
    else:
        response = service.post("/predict", json=body)

    # State first: a request that got through AND queued log rows counts as data lost.
    assert_unchanged(before, capture(platform, pending_log_rows=log.pending))
    assert response.status_code == expected.status, response.text
    assert_message(response.text, names=expected.names, fix=expected.fix)

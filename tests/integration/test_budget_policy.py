"""The error-budget policy through the real flows: a real Prometheus (the local monitoring stack,
evaluating the committed SLO rules) holds a spent serving-availability budget, pushed as the
service's own counters through the Pushgateway; `promote-model` and `canary-rollout` run on a
real Prefect server against a real MLflow server. Refused: nothing moves and no audit record is
added; overridden: the promotion goes through and its audit record says so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from mlflow import MlflowClient
from prometheus_client import CollectorRegistry, Counter, push_to_gateway

from flows.canary import CanaryParams, canary_rollout
from flows.promotion import audited_reason, promote_model
from mlre import canary, registry
from mlre.settings import PROJECT_ROOT, get_settings
from mlre.slo.outputs import LOCAL_RULES_FILE
from mlre.slo.policy import BudgetPolicyError, Override, decide
from mlre.slo.status import SloStatus
from tests.integration.test_monitoring_stack import Stack, monitoring_stack
from tests.support.mlflow_server import MlflowServer
from tests.support.prefect_runs import task_run_states

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
SPENT = "serving-availability error budget exhausted"


@pytest.fixture(scope="module")
def spent_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prometheus with the committed SLO rules, where the service answered only from its
    fallback: the availability SLI is 100 % bad, so its 30-day budget is far overspent."""
    rules = (PROJECT_ROOT / LOCAL_RULES_FILE,)
    with monitoring_stack(tmp_path_factory.mktemp("budget-policy"), rule_files=rules) as stack:
        served = CollectorRegistry()
        answers = Counter(
            "mlre_serving_predictions", "", ["model_version", "route"], registry=served
        )
        for value in (10, 20):  # two scrapes with a growth: rate() > 0 over every window
            answers.labels(model_version="1", route="fallback").inc(10)
            push_to_gateway(
                stack.settings.pushgateway_endpoint,
                job="mlre-serving",
                grouping_key={"instance": "budget-policy-test:8000"},
                registry=served,
            )
            stack.wait_for(
                f'mlre_serving_predictions_total{{job="mlre-serving"}} == {value}',
                f"the service's counter at {value} scraped",
            )
        stack.wait_for(
            'slo:period_error_budget_remaining:ratio{sloth_id="serving-availability"} < 0',
            "the availability budget recorded as spent",
        )
        yield stack


@pytest.fixture
def model(
    spent_stack: Stack,
    mlflow_server: MlflowServer,
    prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[MlflowClient, str, list[str]]]:
    """A fresh registered model with a champion (v1) and a second version; the flows read the
    spent stack's Prometheus and the session's MLflow."""
    name = f"fraud-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_server.tracking_uri)
    client.create_registered_model(name)
    experiment = client.get_experiment_by_name("Default").experiment_id
    versions = []
    for _ in range(2):
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(name, source=run.info.artifact_uri, run_id=run.info.run_id)
        versions.append(str(mv.version))
    registry.promote(
        client, name, versions[0], reason="first champion", run_id="pytest", actor="tester",
        lock=lambda _name: nullcontext(),
    )  # fmt: skip
    monkeypatch.setenv("MLRE_PROMETHEUS_URL", spent_stack.settings.prometheus_endpoint)
    monkeypatch.setenv("MLRE_MLFLOW_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("MLRE_MODEL_NAME", name)
    get_settings.cache_clear()
    yield client, name, versions
    get_settings.cache_clear()


def _artifacts(flow_run_id: Any) -> dict[str, str]:
    """The flow run's markdown artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: str(a.data) for a in found}


def _state_of(client: MlflowClient, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(aliases, tags) of the registered model: the aliases and the audit trail."""
    model = client.get_registered_model(name)
    return dict(model.aliases), dict(model.tags)


def test_spent_budget_refuses_the_promotion_and_changes_nothing(model) -> None:
    client, name, (v1, v2) = model
    before = _state_of(client, name)

    state = promote_model(name, v2, reason="passed the evaluation gate", return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert type(error) is BudgetPolicyError, repr(error)
    message = str(error)
    assert message.startswith(f"Error-budget policy refuses the promotion of model {name!r}")
    assert SPENT in message
    assert "left of the 30-day budget" in message
    assert "override_budget_policy=True" in message
    assert _state_of(client, name) == before  # aliases and audit trail untouched
    assert client.get_registered_model(name).aliases == {registry.CHAMPION: v1}
    assert len(registry.history(client, name)) == 1
    flow_run_id = state.state_details.flow_run_id
    assert task_run_states(flow_run_id) == {"check-error-budget-policy": ["Failed"]}
    shown = _artifacts(flow_run_id)["budget-policy"]
    assert "Error-budget policy: refused" in shown
    assert SPENT in shown


def test_override_promotes_and_the_audit_record_says_so(model) -> None:
    client, name, (v1, v2) = model
    without_reason = promote_model(name, v2, override_budget_policy=True, return_state=True)
    assert without_reason.is_failed()
    assert "needs an override_reason" in str(without_reason.result(raise_on_failure=False))
    assert len(registry.history(client, name)) == 1

    state = promote_model(
        name, v2, reason="passed the evaluation gate", override_budget_policy=True,
        override_reason="hotfix for INC-7", return_state=True,
    )  # fmt: skip

    assert state.is_completed(), state.message
    record = state.result()
    assert client.get_registered_model(name).aliases == {
        registry.CHAMPION: v2,
        registry.PREVIOUS_CHAMPION: v1,
    }
    stored = registry.history(client, name)[-1]
    assert stored == record
    assert stored.reason.startswith("passed the evaluation gate [error-budget policy overridden")
    assert "by prefect:promote-model: hotfix for INC-7" in stored.reason
    assert SPENT in stored.reason
    shown = _artifacts(state.state_details.flow_run_id)["budget-policy"]
    assert "Error-budget policy: overridden" in shown


def test_spent_budget_refuses_the_canary_before_anything_moves(model) -> None:
    client, name, (v1, v2) = model
    before = _state_of(client, name)

    state = canary_rollout(CanaryParams(model_name=name, version=v2), return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert type(error) is BudgetPolicyError, repr(error)
    assert str(error).startswith(
        f"Error-budget policy refuses the canary rollout of model {name!r}"
    )
    after = _state_of(client, name)
    assert after == before  # no challenger alias, no canary share tag, no audit record
    assert registry.CHALLENGER not in after[0]
    assert canary.CANARY_SHARE_TAG not in after[1]
    assert client.get_registered_model(name).aliases == {registry.CHAMPION: v1}


def test_the_override_note_survives_the_audit_records_reason_limit() -> None:
    spent = SloStatus("serving-latency", "serving", "latency", 0.99, 0.9, -0.5)
    override = Override(actor="prefect:canary-rollout", why="hotfix")
    refused = decide([spent], "canary", override=override)
    note = refused.audit_note()
    assert note.startswith(" [error-budget policy overridden by prefect:canary-rollout: hotfix")
    assert audited_reason("canary healthy", refused) == "canary healthy" + note
    cut = audited_reason("x" * 5_000, refused)
    assert len(cut) == registry.REASON_MAX
    assert cut.endswith(note)
    assert audited_reason("canary healthy", decide([], "canary", override=override)) == (
        "canary healthy"  # nothing refused (not even checked): nothing overridden, no note
    )

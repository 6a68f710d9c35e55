"""The error-budget policy decides on model changes from SLO statuses: a spent gating budget
refuses, naming the SLO and what is left; burning and healthy budgets pass; what cannot be
checked passes and says so (unless the policy fails closed); an override lets a refusal through
and leaves a note for the audit trail."""

from __future__ import annotations

import pytest

from mlre.errors import ConfigError
from mlre.prometheus_api import Sample
from mlre.settings import Settings
from mlre.slo.policy import (
    MODEL_CHANGE_SLOS,
    NO_PROMETHEUS,
    BudgetPolicy,
    BudgetPolicyError,
    Override,
    decide,
    enforce,
    for_model,
    read_budgets,
)
from mlre.slo.status import SloStatus
from mlre.supervisor import free_port

pytestmark = pytest.mark.unit
OPERATOR = Override(actor="prefect:promote-model", why="hotfix for INC-42")


def _status(
    slo_id: str, remaining: float | None, *, sli: float | None = 0.99, alerts=()
) -> SloStatus:
    service, _, name = slo_id.partition("-")
    return SloStatus(
        slo_id=slo_id,
        service=service,
        name=name,
        objective=0.995,
        sli=sli,
        budget_remaining=remaining,
        alerts=tuple(alerts),
    )


def _healthy(**overrides: SloStatus) -> list[SloStatus]:
    """Every gating SLO with budget left, some replaced, plus a non-gating one spent."""
    rows = {slo_id: _status(slo_id, 0.8) for slo_id in MODEL_CHANGE_SLOS}
    rows.update({s.slo_id: s for s in overrides.values()})
    return [*rows.values(), _status("features-freshness", -3.0)]


def test_default_gates_are_the_model_and_serving_slos() -> None:
    policy = BudgetPolicy()
    expected = ("model-quality", "serving-availability", "serving-latency")
    assert policy.slos_for("promote") == policy.slos_for("canary") == expected
    with pytest.raises(ConfigError, match="no change 'retrain'"):
        policy.slos_for("retrain")


def test_exhausted_gating_budget_refuses_naming_the_slo_and_what_is_left() -> None:
    statuses = _healthy(a=_status("serving-availability", -0.125))
    decision = decide(statuses, "promote")
    assert not decision.allowed
    assert decision.verdict == "refused"
    expected = "serving-availability error budget exhausted: -12.5% left of the 30-day budget"
    assert decision.blocking == [expected]
    assert expected in decision.reasons
    assert "model-quality: 80.0% of the 30-day error budget left" in decision.reasons
    assert decision.audit_note() == ""
    with pytest.raises(BudgetPolicyError) as refused:
        enforce(decision, "model 'fraud' version 3")
    message = str(refused.value)
    assert message.startswith(
        "Error-budget policy refuses the promotion of model 'fraud' version 3: "
    )
    assert expected in message
    assert "override_budget_policy=True" in message
    assert "wait for the budget to recover" in message
    markdown = decision.markdown("model 'fraud' version 3")
    assert "**refused**" in markdown
    assert "| serving-availability | -12.5% | exhausted | - |" in markdown


def test_every_exhausted_gating_slo_is_named() -> None:
    statuses = _healthy(
        a=_status("serving-latency", 0.0), b=_status("model-quality", -1.0, alerts=["Page"])
    )
    decision = decide(statuses, "canary")
    assert not decision.allowed
    assert [line.split(" ")[0] for line in decision.blocking] == [
        "model-quality",
        "serving-latency",
    ]
    assert "-100.0% left" in decision.blocking[0]
    assert "0.0% left" in decision.blocking[1]


def test_spent_budget_of_a_slo_that_gates_nothing_does_not_refuse() -> None:
    decision = decide(_healthy(), "promote")  # features-freshness is at -300 %
    assert decision.allowed
    assert decision.verdict == "allowed"
    assert not any("features" in reason for reason in decision.reasons)
    assert [s.slo_id for s in decision.statuses] == list(MODEL_CHANGE_SLOS)


def test_burning_budget_is_named_but_allowed() -> None:
    burning = _status("serving-latency", 0.4, alerts=["ServingLatencyBudgetBurn (ticket)"])
    decision = decide(_healthy(a=burning), "promote")
    assert decision.allowed
    assert decision.blocking == []
    assert (
        "serving-latency is burning its error budget (ServingLatencyBudgetBurn (ticket) "
        "firing): 40.0% left of the 30-day budget"
    ) in decision.reasons


def test_ok_budgets_allow_with_one_line_each() -> None:
    decision = decide(_healthy(), "canary")
    assert decision.allowed
    assert decision.reasons == [
        f"{slo_id}: 80.0% of the 30-day error budget left" for slo_id in MODEL_CHANGE_SLOS
    ]


def test_no_data_fails_open_and_says_what_could_not_be_checked() -> None:
    decision = decide(_healthy(a=_status("model-quality", None, sli=None)), "promote")
    assert decision.allowed
    assert decision.blocking == []
    (line,) = [r for r in decision.reasons if "could not be checked" in r]
    assert "fail-open" in line
    assert "model-quality: no data in Prometheus" in line


def test_no_prometheus_fails_open() -> None:
    decision = decide([], "promote", unavailable=NO_PROMETHEUS)
    assert decision.allowed
    (line,) = decision.reasons
    assert line.startswith("the error-budget policy could not be checked, which does not refuse")
    assert "MLRE_PROMETHEUS_URL is not set" in line


def test_a_gating_slo_missing_from_the_specs_cannot_be_checked() -> None:
    statuses = [s for s in _healthy() if s.slo_id != "serving-latency"]
    decision = decide(statuses, "promote")
    assert decision.allowed
    assert any("serving-latency: not among the SLO specs" in r for r in decision.reasons)


@pytest.mark.parametrize(
    ("statuses", "unavailable"),
    [
        ([], NO_PROMETHEUS),
        (_healthy(a=_status("serving-availability", None, sli=None)), ""),
    ],
    ids=["no-prometheus", "no-data"],
)
def test_fail_closed_refuses_what_cannot_be_checked(
    statuses: list[SloStatus], unavailable: str
) -> None:
    policy = BudgetPolicy(fail_closed=True)
    decision = decide(statuses, "promote", policy=policy, unavailable=unavailable)
    assert not decision.allowed
    (line,) = decision.blocking
    assert "fails closed (MLRE_BUDGET_POLICY_FAIL_CLOSED=true)" in line
    overridden = decide(
        statuses, "promote", policy=policy, unavailable=unavailable, override=OPERATOR
    )
    assert overridden.allowed
    assert overridden.overridden


def test_fail_closed_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not BudgetPolicy.from_settings(Settings()).fail_closed
    monkeypatch.setenv("MLRE_BUDGET_POLICY_FAIL_CLOSED", "true")
    assert BudgetPolicy.from_settings(Settings()).fail_closed


def test_override_lets_a_refusal_through_with_an_audit_note() -> None:
    statuses = _healthy(a=_status("serving-availability", -0.125))
    decision = decide(statuses, "promote", override=OPERATOR)
    assert decision.allowed
    assert decision.overridden
    assert decision.verdict == "overridden"
    assert decision.reasons[-1] == "overridden by prefect:promote-model: hotfix for INC-42"
    assert decision.blocking  # what was overridden stays on the record
    assert enforce(decision, "model 'fraud'") is decision
    assert decision.audit_note() == (
        " [error-budget policy overridden by prefect:promote-model: hotfix for INC-42 "
        "(refused for: serving-availability error budget exhausted: -12.5% left of the 30-day "
        "budget)]"
    )
    assert "**overridden**" in decision.markdown("model 'fraud'")


def test_an_override_that_was_not_needed_leaves_no_audit_note() -> None:
    decision = decide(_healthy(), "canary", override=OPERATOR)
    assert decision.allowed
    assert not decision.overridden
    assert decision.audit_note() == ""
    assert decision.reasons[-1].endswith("but not needed: nothing refused")


@pytest.mark.parametrize("why", ["", "   "])
def test_an_override_needs_a_reason(why: str) -> None:
    with pytest.raises(BudgetPolicyError, match="needs an override_reason"):
        Override(actor="prefect:canary-rollout", why=why)


def test_read_budgets_without_prometheus_says_why() -> None:
    reading = read_budgets(Settings(monitoring=False, prometheus_url=""))
    assert reading.statuses == []
    assert reading.problem == NO_PROMETHEUS


def test_read_budgets_with_prometheus_down_names_it() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reading = read_budgets(Settings(monitoring=False), prometheus_url=dead)
    assert reading.statuses == []
    assert f"Prometheus at {dead} did not answer" in reading.problem
    assert decide(reading.statuses, "promote", unavailable=reading.problem).allowed


def test_model_slos_are_read_for_the_model_being_changed() -> None:
    answers = [
        Sample({"sloth_id": "model-quality", "model": "fraud", "version": "3"}, -0.5),
        Sample({"sloth_id": "model-quality", "model": "churn", "version": "1"}, 0.9),
        Sample({"sloth_id": "serving-availability"}, 0.7),
    ]
    query = for_model(lambda promql: answers, "fraud")
    assert [s.labels.get("model") for s in query("slo:period_error_budget_remaining:ratio")] == [
        "fraud",
        None,
    ]

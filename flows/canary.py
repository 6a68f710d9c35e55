"""Flow `canary-rollout`: raise the challenger's share step by step; roll back on any breach.

The error-budget policy (mlre.slo.policy) is asked first, before the challenger alias or any
share moves; the canary's own rollback is never gated."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from flows import slis
from flows._common import ModelParams, mlflow_client, server_task
from flows.locks import prefect_lock
from flows.promotion import audited_reason, check_budget_policy, requested_override
from mlre import canary, registry
from mlre.prediction_log import read_predictions
from mlre.prometheus_api import querier
from mlre.settings import get_settings
from mlre.waiting import WaitTimeout, wait_until

CANARY_ACTOR = "prefect:canary-rollout"


class CanaryParams(ModelParams):
    """What to roll out and how carefully; every field shows in the Prefect UI's run form."""

    version: str | None = Field(None, description="Version to roll out (default: challenger).")
    steps: list[float] = Field([0.05, 0.25, 0.5], description="Increasing canary shares.")
    metrics_url: str | None = Field(
        None, description="Service /metrics (default http://MLRE_HOST:MLRE_SERVING_PORT/metrics)."
    )
    prometheus_url: str | None = Field(
        None,
        description="Judge every replica through Prometheus' API (default: MLRE_PROMETHEUS_URL "
        "when set, as in the cloud's several pods; else the one service's /metrics above).",
    )
    min_predictions: int = Field(500, ge=1, description="Logged predictions per arm per step.")
    step_timeout_s: float = Field(600.0, gt=0, description="Max wait for those predictions.")
    switch_timeout_s: float = Field(60.0, gt=0, description="Max wait for the service to switch.")
    poll_s: float = Field(2.0, gt=0, description="Polling interval while waiting.")
    thresholds: canary.CanaryThresholds = Field(default_factory=canary.CanaryThresholds)
    override_budget_policy: bool = Field(
        False,
        description="Roll out even though a gating SLO's error budget is spent (needs "
        "override_reason; the promotion's audit record says so).",
    )
    override_reason: str = Field("", description="Why the error-budget policy is overridden.")


@dataclass
class RolloutResult:
    """How the rollout ended and each step's decision."""

    model_name: str
    version: str
    outcome: str  # "promoted" or "rolled_back"
    decisions: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


def _metrics_url(params: CanaryParams) -> str:
    if params.metrics_url:
        return params.metrics_url
    from mlre.serving_config import ServingConfig

    return f"http://{get_settings().host}:{ServingConfig().port}/metrics"


@server_task("resolve-canary-version", retries=2, retry_delay_seconds=[2, 10])
def resolve_version(model_name: str, version: str | None) -> str:
    """The version to roll out; it becomes (or already is) the challenger alias."""
    client = mlflow_client()
    model = registry.get_model(client, model_name)
    chosen = version or model.aliases.get(registry.CHALLENGER)
    if chosen is None:
        raise canary.CanaryError(
            f"Model {model_name!r} has no {registry.CHALLENGER!r} alias; run evaluate-model or "
            "pass the version to roll out."
        )
    mv = registry.get_version(client, model_name, chosen)
    if model.aliases.get(registry.CHAMPION) == mv.version:
        raise canary.CanaryError(f"Version {mv.version} of {model_name!r} is already champion.")
    if problems := registry.refusal_reasons(mv):
        raise canary.CanaryError(f"Version {mv.version} cannot be rolled out: {problems}")
    if model.aliases.get(registry.CHALLENGER) != mv.version:
        client.set_registered_model_alias(model_name, registry.CHALLENGER, mv.version)
    return mv.version


@server_task("set-canary-share", retries=2, retry_delay_seconds=[2, 10])
def set_canary_share(model_name: str, share: float) -> None:
    """Publish the share on the registered model; the service's poller picks it up."""
    canary.set_share(mlflow_client(), model_name, share)


def _scrape(url: str) -> str:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return response.text


def _switched_on_metrics(url: str, version: str, share: float) -> Callable[[], object]:
    """A check: the one service's /metrics shows the canary at this share (returns the scrape)."""

    def check() -> object:
        text = _scrape(url)
        state = canary.served_state(text)
        serving = abs(state[0] - share) < 1e-9 and state[1].get("canary") == version
        return text if serving else None

    return check


def _switched_on_prometheus(url: str, version: str, share: float) -> Callable[[], object]:
    """A check: every replica Prometheus scrapes serves the canary at this share (returns now)."""
    query = querier(url)

    def check() -> object:
        switched, total = canary.replicas_switched(query, version, share)
        return datetime.now(UTC) if total and switched == total else None

    return check


@task(name="wait-for-service-switch")
def wait_for_switch(params: CanaryParams, version: str, share: float) -> object:
    """Wait until the service (every replica, through Prometheus) serves the canary at this
    share; returns the step's starting point (the scrape, or the time)."""
    where = params.prometheus_url or _metrics_url(params)
    switched = (
        _switched_on_prometheus(where, version, share)
        if params.prometheus_url
        else _switched_on_metrics(where, version, share)
    )
    try:
        return wait_until(
            switched,
            timeout_s=params.switch_timeout_s,
            what="canary switch",
            interval_s=params.poll_s,
        )
    except WaitTimeout as exc:
        raise canary.CanaryError(
            f"The service at {where} did not switch to canary {version} at share {share} within "
            f"{params.switch_timeout_s:.0f} s; is it running (every replica) and polling the "
            "same registry?"
        ) from exc


@task(name="measure-arms")
def measure_arms(
    params: CanaryParams, start: object, versions: tuple[str, str]
) -> tuple[canary.ArmStats, canary.ArmStats]:
    """(champion, canary) counters and latency buckets over the step: /metrics deltas of the one
    service, or Prometheus' increase() over every replica."""
    champion_version, canary_version = versions
    if params.prometheus_url:
        query, window_s = (
            querier(params.prometheus_url),
            (datetime.now(UTC) - start).total_seconds(),
        )
        return (
            canary.arm_stats_from_prometheus(query, champion_version, "champion", window_s),
            canary.arm_stats_from_prometheus(query, canary_version, "canary", window_s),
        )
    before, after = str(start), _scrape(_metrics_url(params))
    return (
        canary.arm_stats(after, champion_version, "champion").minus(
            canary.arm_stats(before, champion_version, "champion")
        ),
        canary.arm_stats(after, canary_version, "canary").minus(
            canary.arm_stats(before, canary_version, "canary")
        ),
    )


@task(name="wait-for-predictions")
def wait_for_predictions(
    model_name: str, version: str, since: datetime, params: CanaryParams
) -> tuple[np.ndarray, np.ndarray]:
    """(champion scores, canary scores) logged since `since`, once both arms have `minimum`."""
    settings = get_settings()
    latest: list[tuple[np.ndarray, np.ndarray]] = []

    def both_arms() -> bool:
        log = read_predictions(settings.prediction_log_root, model_name, start=since)
        canary_scores = log.loc[
            (log["route"] == "canary") & (log["model_version"] == version), "score"
        ].to_numpy()
        champion_scores = log.loc[log["route"] == "champion", "score"].to_numpy()
        latest[:] = [(champion_scores, canary_scores)]
        counts = {"champion": len(champion_scores), "canary": len(canary_scores)}
        return canary.enough_predictions(counts, params.min_predictions)

    # Too few predictions by the deadline is the step's decision to make (it says so), not an
    # error here: return what there is.
    with contextlib.suppress(WaitTimeout):
        wait_until(
            both_arms,
            timeout_s=params.step_timeout_s,
            what="predictions on both arms",
            interval_s=params.poll_s,
        )
    return latest[0]


@task(name="decide-canary-step")
def decide(
    share: float,
    scores: tuple[np.ndarray, np.ndarray],
    arms: tuple[canary.ArmStats, canary.ArmStats],
    params: CanaryParams,
) -> canary.StepDecision:
    """The step's decision from the logged scores and the arms' counters."""
    evidence = canary.StepEvidence(
        share=share,
        champion_scores=scores[0],
        canary_scores=scores[1],
        champion=arms[0],
        canary=arms[1],
    )
    decision = canary.decide_step(evidence, params.thresholds)
    if len(scores[1]) < params.min_predictions or len(scores[0]) < params.min_predictions:
        reasons = [
            *decision.reasons,
            f"not enough predictions within {params.step_timeout_s:.0f} s "
            f"(champion {len(scores[0])}, canary {len(scores[1])}, need {params.min_predictions})",
        ]
        decision = canary.StepDecision(share, False, reasons, decision.measures)
    return decision


@server_task("roll-back-canary", retries=2, retry_delay_seconds=[2, 10])
def roll_back(model_name: str, version: str, reason: str) -> registry.AuditRecord:
    """Share 0, challenger removed, version tagged, audit record: under the promotion lock."""
    return canary.record_canary_rollback(
        mlflow_client(),
        model_name,
        version,
        reason=reason,
        run_id=str(flow_run.get_id()),
        actor=CANARY_ACTOR,
        lock=prefect_lock,
    )


@server_task("promote-canary", retries=2, retry_delay_seconds=[2, 10])
def promote(model_name: str, version: str, reason: str) -> registry.AuditRecord:
    """Champion <- canary through the same promotion code as the lifecycle; share back to 0."""
    client = mlflow_client()
    record = registry.promote(
        client,
        model_name,
        version,
        reason=reason,
        run_id=str(flow_run.get_id()),
        actor=CANARY_ACTOR,
        lock=prefect_lock,
    )
    canary.set_share(client, model_name, 0.0)
    client.set_model_version_tag(model_name, version, canary.CANARY_RESULT_TAG, "promoted")
    return record


def _step_artifact(index: int, decision: canary.StepDecision, version: str) -> None:
    create_table_artifact(
        key=f"canary-step-{index}",
        table=[{"version": version, **decision.row()}],
        description=f"Canary step {index}: share {decision.share:g} -> "
        + ("healthy" if decision.healthy else "BREACH, rolled back"),
    )


@flow(name="canary-rollout", log_prints=True, **slis.flow_run_hooks())
def canary_rollout(params: CanaryParams | None = None) -> RolloutResult:
    """Route growing shares to the challenger; promote if every step is healthy, else roll back."""
    params = params or CanaryParams()
    if params.prometheus_url is None and get_settings().prometheus_url:
        params = params.model_copy(update={"prometheus_url": get_settings().prometheus_url})
    logger = get_run_logger()
    name = params.model_name or get_settings().model_name
    steps = canary.check_steps(params.steps)
    override = requested_override(
        params.override_budget_policy, CANARY_ACTOR, params.override_reason
    )
    subject = f"model {name!r} " + (
        f"version {params.version}" if params.version else "(its challenger)"
    )
    budget = check_budget_policy("canary", name, subject, override, params.prometheus_url)
    version = resolve_version(name, params.version)
    champion = registry.champion_version(mlflow_client(), name)
    if champion is None:
        raise canary.CanaryError(f"Model {name!r} has no champion to compare the canary with.")
    result = RolloutResult(name, version, "rolled_back")
    for index, share in enumerate(steps, start=1):
        set_canary_share(name, share)
        try:
            start = wait_for_switch(params, version, share)
        except canary.CanaryError as exc:
            result.reason = str(exc)
            roll_back(name, version, result.reason)
            raise
        since = datetime.now(UTC)
        scores = wait_for_predictions(name, version, since, params)
        arms = measure_arms(params, start, (champion.version, version))
        decision = decide(share, scores, arms, params)
        _step_artifact(index, decision, version)
        result.decisions.append(decision.row())
        logger.info("Step %d (share %g): %s", index, share, decision.row())
        if not decision.healthy:
            result.reason = f"step {index} (share {share:g}): " + "; ".join(decision.reasons)
            roll_back(name, version, result.reason)
            break
    else:
        result.outcome = "promoted"
        result.reason = f"canary healthy at shares {steps}"
        promote(name, version, audited_reason(result.reason, budget))
    create_markdown_artifact(
        key="canary-rollout",
        markdown=f"# {name} v{version}: {result.outcome}\n\n{result.reason}\n",
    )
    return result

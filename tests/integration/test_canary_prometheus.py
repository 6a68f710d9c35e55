"""The canary's Prometheus path against a real Prometheus: two replicas of the service (their
series pushed through a real Pushgateway with their own `instance`), so "switched" means every
replica, and the arms' error rate and latency are summed over all of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway

from mlre import canary
from mlre.prometheus_api import querier
from serving.metrics import LATENCY_BUCKETS
from tests.integration.test_monitoring_stack import Stack, monitoring_stack

pytestmark = pytest.mark.integration
CHAMPION, CANDIDATE = "6", "7"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with monitoring_stack(tmp_path_factory.mktemp("canary-prometheus")) as running:
        yield running


class Replica:
    """One replica's /metrics, as serving.metrics names them, pushed as `instance`."""

    def __init__(self, stack: Stack, instance: str) -> None:
        self.stack, self.instance = stack, instance
        self.registry = r = CollectorRegistry()
        self.predictions = Counter(
            canary.REQUESTS_METRIC, "", ["model_version", "route"], registry=r
        )
        self.errors = Counter(canary.ERRORS_METRIC, "", ["cause", "model_version"], registry=r)
        self.latency = Histogram(
            canary.LATENCY_METRIC, "", ["model_version", "route"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        for version in (CHAMPION, CANDIDATE):  # at 0 once served, as serving.metrics does
            self.errors.labels(cause="model_error", model_version=version)
        self.share = Gauge(canary.SHARE_METRIC, "", registry=r)
        self.info = Gauge(canary.MODEL_INFO_METRIC, "", ["slot", "version"], registry=r)

    def serve(self, share: float, canary_version: str | None) -> None:
        self.share.set(share)
        self.info.labels(slot="champion", version=CHAMPION).set(1)
        if canary_version:
            self.info.labels(slot="canary", version=canary_version).set(1)
        self.push()

    def answer(self, version: str, route: str, n: int, seconds: float, errors: int = 0) -> None:
        self.predictions.labels(model_version=version, route=route).inc(n)
        for _ in range(n):
            self.latency.labels(model_version=version, route=route).observe(seconds)
        if errors:
            self.errors.labels(cause="model_error", model_version=version).inc(errors)

    def push(self) -> None:
        push_to_gateway(
            self.stack.settings.pushgateway_endpoint,
            job="mlre-serving-replicas",
            grouping_key={"instance": self.instance},
            registry=self.registry,
        )


def _scraped(stack: Stack, promql: str, value: float, what: str) -> None:
    stack.wait_for(f"{promql} == {value!r}", what)


def test_switched_means_every_replica(stack: Stack) -> None:
    query = querier(stack.settings.prometheus_endpoint)
    first, second = Replica(stack, "pod-a:8000"), Replica(stack, "pod-b:8000")
    first.serve(0.25, CANDIDATE)
    second.serve(0.05, None)  # still on the previous step: not switched yet
    _scraped(stack, f"count({canary.SHARE_METRIC})", 2, "both replicas scraped")
    _scraped(stack, f"sum({canary.SHARE_METRIC})", 0.3, "both shares scraped")
    assert canary.replicas_switched(query, CANDIDATE, 0.25) == (1, 2)
    second.serve(0.25, CANDIDATE)
    _scraped(stack, f"sum({canary.SHARE_METRIC})", 0.5, "the second replica switched")
    assert canary.replicas_switched(query, CANDIDATE, 0.25) == (2, 2)


def test_arm_stats_sum_every_replica(stack: Stack) -> None:
    query = querier(stack.settings.prometheus_endpoint)
    replicas = [Replica(stack, f"pod-{i}:8000") for i in "xy"]
    for replica in replicas:  # the step starts: counters at some value
        replica.answer(CHAMPION, "champion", 10, 0.004)
        replica.answer(CANDIDATE, "canary", 10, 0.004)
        replica.push()
    total = f'sum({canary.REQUESTS_METRIC}_total{{instance=~"pod-[xy]:8000"}})'
    _scraped(stack, total, 40, "the step's first counters")
    # During the step: the canary errs on one replica and is slow on the other.
    replicas[0].answer(CANDIDATE, "canary", 95, 0.004, errors=5)
    replicas[1].answer(CANDIDATE, "canary", 100, 0.2)
    for replica in replicas:
        replica.answer(CHAMPION, "champion", 300, 0.004)
        replica.push()
    _scraped(stack, total, 40 + 195 + 600, "the step's last counters")

    window_s = 120.0  # covers both scrapes; increase() extrapolates every series alike
    arm = canary.arm_stats_from_prometheus(query, CANDIDATE, "canary", window_s)
    champion = canary.arm_stats_from_prometheus(query, CHAMPION, "champion", window_s)
    # increase() extrapolates to the window's edges, less so for a series that started at 0
    # (Prometheus stops at the zero point): rates are close, not exact.
    assert arm.error_rate == pytest.approx(5 / (195 + 5), rel=0.2)
    assert champion.error_rate == 0.0
    assert arm.latency_quantile(0.99) == 0.25  # the slow replica's 100 of 195 at 0.2 s
    assert champion.latency_quantile(0.99) == 0.005
    decision = canary.decide_step(
        canary.StepEvidence(share=0.25, champion_scores=_scores(), canary_scores=_scores(),
                            champion=champion, canary=arm),
        canary.CanaryThresholds(),
    )  # fmt: skip
    assert not decision.healthy  # one pod's errors and the other's latency, both seen
    assert any("error rate" in reason for reason in decision.reasons), decision.reasons


def _scores() -> object:
    import numpy as np

    return np.random.default_rng(3).beta(2, 8, 2_000)

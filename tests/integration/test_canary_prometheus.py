"""The canary's Prometheus path against a real Prometheus: two replicas of the service (their
series pushed through a real Pushgateway with their own `instance`), so "switched" means every
replica (and every worker process of a replica), and the arms' error rate and latency are summed
over all of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    delete_from_gateway,
    push_to_gateway,
)

from mlre import canary
from mlre.prometheus_api import querier
from serving.metrics import LATENCY_BUCKETS
from tests.integration.test_monitoring_stack import Stack, monitoring_stack

pytestmark = pytest.mark.integration
CHAMPION, CANDIDATE = "6", "7"
JOB = "mlre-serving-replicas"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with monitoring_stack(tmp_path_factory.mktemp("canary-prometheus")) as running:
        yield running


class Replica:
    """One replica's /metrics, as serving.metrics names them, pushed as `instance`; with `pid`,
    one worker process of a replica (its state gauges carry the worker's `pid` label, as with
    MLRE_SERVING_WORKERS > 1)."""

    def __init__(self, stack: Stack, instance: str, pid: str | None = None) -> None:
        self.stack, self.instance = stack, instance
        self.grouping_key = {"instance": instance, **({"pid": pid} if pid else {})}
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
            job=JOB,
            grouping_key=self.grouping_key,
            registry=self.registry,
        )

    def delete(self) -> None:
        delete_from_gateway(
            self.stack.settings.pushgateway_endpoint, job=JOB, grouping_key=self.grouping_key
        )


@pytest.fixture
def replicas(stack: Stack) -> Iterator[Callable[..., Replica]]:
    """Factory of replicas; afterwards their series are gone from Prometheus, so every test
    counts replicas from zero whatever ran before it."""
    made: list[Replica] = []

    def make(instance: str, pid: str | None = None) -> Replica:
        made.append(Replica(stack, instance, pid))
        return made[-1]

    yield make
    for replica in made:
        replica.delete()
    stack.wait_for(f'absent({canary.SHARE_METRIC}{{job="{JOB}"}})', "replicas gone")


def _scraped(stack: Stack, promql: str, value: float, what: str) -> None:
    stack.wait_for(f"{promql} == {value!r}", what)


def test_switched_means_every_replica(stack: Stack, replicas: Callable[..., Replica]) -> None:
    query = querier(stack.settings.prometheus_endpoint)
    first, second = replicas("pod-a:8000"), replicas("pod-b:8000")
    first.serve(0.25, CANDIDATE)
    second.serve(0.05, None)  # still on the previous step: not switched yet
    _scraped(stack, f"count({canary.SHARE_METRIC})", 2, "both replicas scraped")
    _scraped(stack, f"sum({canary.SHARE_METRIC})", 0.3, "both shares scraped")
    assert canary.replicas_switched(query, CANDIDATE, 0.25) == (1, 2)
    second.serve(0.25, CANDIDATE)
    _scraped(stack, f"sum({canary.SHARE_METRIC})", 0.5, "the second replica switched")
    assert canary.replicas_switched(query, CANDIDATE, 0.25) == (2, 2)


def test_switched_means_every_worker_of_a_replica(
    stack: Stack, replicas: Callable[..., Replica]
) -> None:
    query = querier(stack.settings.prometheus_endpoint)
    single = replicas("pod-s:8000")  # one process: no pid label
    workers = [replicas("pod-w:8000", pid) for pid in ("101", "102")]
    single.serve(0.25, CANDIDATE)
    workers[0].serve(0.25, CANDIDATE)
    workers[1].serve(0.05, None)  # this worker's poller has not seen the step yet
    _scraped(stack, f"count({canary.SHARE_METRIC})", 3, "every worker scraped")
    assert canary.replicas_switched(query, CANDIDATE, 0.25) == (1, 2)
    workers[1].serve(0.25, CANDIDATE)
    _scraped(stack, f"sum({canary.SHARE_METRIC})", 0.75, "the last worker switched")
    assert canary.replicas_switched(query, CANDIDATE, 0.25) == (2, 2)


def test_arm_stats_sum_every_replica(stack: Stack, replicas: Callable[..., Replica]) -> None:
    query = querier(stack.settings.prometheus_endpoint)
    pods = [replicas(f"pod-{i}:8000") for i in "xy"]
    for replica in pods:  # the step starts: counters at some value
        replica.answer(CHAMPION, "champion", 10, 0.004)
        replica.answer(CANDIDATE, "canary", 10, 0.004)
        replica.push()
    total = f'sum({canary.REQUESTS_METRIC}_total{{instance=~"pod-[xy]:8000"}})'
    _scraped(stack, total, 40, "the step's first counters")
    # During the step: the canary errs on one replica and is slow on the other.
    pods[0].answer(CANDIDATE, "canary", 95, 0.004, errors=5)
    pods[1].answer(CANDIDATE, "canary", 100, 0.2)
    for replica in pods:
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

"""CircuitBreaker: opens after consecutive failures, probes once after a pause, success closes."""

from __future__ import annotations

import pytest

from serving.breaker import CircuitBreaker, State

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures=3, open_s=2.0, clock=Clock())
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # a success in between resets the count
    breaker.failed()
    breaker.failed()
    assert breaker.state is State.CLOSED
    assert breaker.allow()
    breaker.failed()
    assert breaker.state is State.OPEN
    assert not breaker.allow()
    assert breaker.retry_in_s() == 2.0


def test_after_the_pause_one_probe_goes_through_and_success_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, open_s=2.0, clock=clock)
    breaker.failed()
    clock.now += 1.5
    assert not breaker.allow()
    assert breaker.retry_in_s() == pytest.approx(0.5)
    clock.now += 0.5
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else still falls back while it runs
    breaker.succeeded()
    assert breaker.state is State.CLOSED
    assert breaker.allow()


def test_a_failed_probe_opens_again_for_a_full_pause() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=5, open_s=2.0, clock=clock)
    for _ in range(5):
        breaker.failed()
    clock.now += 2.0
    assert breaker.allow()
    breaker.failed()  # one failed probe is enough, whatever the threshold
    assert breaker.state is State.OPEN
    assert breaker.retry_in_s() == 2.0


@pytest.mark.parametrize(("failures", "open_s"), [(0, 1.0), (1, 0.0)])
def test_bad_settings_are_refused(failures: int, open_s: float) -> None:
    with pytest.raises(ValueError, match="failures="):
        CircuitBreaker(failures=failures, open_s=open_s)

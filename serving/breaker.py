"""A circuit breaker for the online store: after repeated failures, stop calling it for a while.

Without one, every request during a Redis outage waits out the read budget (and the Redis
client's own reconnect retries) before falling back, so batches queue behind each other and p99
climbs to the timeout. Open, the breaker answers "no" at once and the fallback answers in
microseconds; after `open_s` one request probes the store (half-open) and closes the breaker if
it succeeds. Used from one event loop, so it needs no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after `failures` consecutive failures; open -> half-open after `open_s`;
    half-open lets one call through: success closes, failure opens again."""

    def __init__(
        self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1 or open_s <= 0:
            raise ValueError(f"failures={failures} must be >= 1 and open_s={open_s} > 0")
        self.failures = failures
        self.open_s = open_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return State.CLOSED
        if self._probing or self._clock() - self._opened_at >= self.open_s:
            return State.HALF_OPEN
        return State.OPEN

    def allow(self) -> bool:
        """May a call go to the store now? (In half-open, only the first caller may.)"""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in_s(self) -> float:
        """Seconds until the next probe (0 when closed or probing)."""
        if self._opened_at is None or self._probing:
            return 0.0
        return max(0.0, self.open_s - (self._clock() - self._opened_at))

    def succeeded(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at = self._clock()
            self._probing = False

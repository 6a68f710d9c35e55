"""The one way this project waits for something: poll a condition until it holds or a deadline.

A wait is for an event (a server answers, a process exits, a row appears), never a sleep of a
guessed length; the deadline only bounds how long a broken thing may hang the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from mlre.errors import MlreError

T = TypeVar("T")


class WaitTimeout(MlreError):
    """A condition did not hold within its deadline; the message says what was awaited."""


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
    on_poll: Callable[[float], None] | None = None,
) -> T:
    """Call `condition` until it returns something truthy and return that; WaitTimeout after
    `timeout_s` naming `what`. `on_poll(elapsed_s)` runs between polls (progress output, or a
    check that raises when the awaited process died, so a wait fails fast instead of timing out).
    """
    started = time.monotonic()
    while True:
        result = condition()
        if result:
            return result
        elapsed = time.monotonic() - started
        if elapsed >= timeout_s:
            raise WaitTimeout(f"{what}: not reached within {timeout_s:g} s")
        if on_poll is not None:
            on_poll(elapsed)
        time.sleep(min(interval_s, max(timeout_s - elapsed, 0.0)))

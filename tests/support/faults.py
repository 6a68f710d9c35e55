"""Fault hooks: run a fault (kill or restart a real server) at an exact step of real code.

`inject(monkeypatch, owner, "name", fault, at=N)` wraps `owner.name`, calls the real function,
and fires `fault()` around its N-th matching call, before or after it. Calls through the hook are
serialised (re-entrant: a call may nest in another), so a fault lands between two calls, never in
the middle of one: the same run, the same moment, every time (no sleeps).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

Match = Callable[[tuple[Any, ...], dict[str, Any]], bool]


@dataclass
class Injection:
    """How often the hooked callable ran, and whether the fault fired."""

    calls: int = 0
    fired: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)


def inject(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    fault: Callable[[], None],
    *,
    at: int = 1,
    after: bool = True,
    match: Match | None = None,
) -> Injection:
    """Fire `fault` once, after (or before) the `at`-th call of `owner.name` that `match`es."""
    real = getattr(owner, name)
    injection = Injection()

    @functools.wraps(real)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        with injection.lock:
            if match is not None and not match(args, kwargs):
                return real(*args, **kwargs)
            injection.calls += 1
            due = injection.calls == at
            if due and not after:
                injection.fired = True
                fault()
            result = real(*args, **kwargs)
            if due and after:
                injection.fired = True
                fault()
            return result

    monkeypatch.setattr(owner, name, hooked)
    return injection


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> Injection:
    """Count the calls of `owner.name`, no fault: how often a retried step really ran."""
    return inject(monkeypatch, owner, name, lambda: None, at=0)

"""Prometheus durations: parse `30d`/`1h30m`/`2s500ms` to milliseconds and format them back."""

from __future__ import annotations

import re

_UNITS_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
# Prometheus' own grammar, without y/w (we never write them): each unit at most once, in order.
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")


def parse_ms(text: str) -> int:
    """Milliseconds of a Prometheus duration such as `30d`, `1h30m` or `2s500ms`."""
    match = _DURATION.match(text.strip()) if text else None
    if not match or not any(match.groups()):
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (d, h, m, s, ms), "
            "e.g. 5m or 1h30m"
        )
    return sum(int(n) * ms for n, ms in zip(match.groups(), _UNITS_MS.values(), strict=True) if n)


def format_ms(ms: int) -> str:
    """The shortest Prometheus duration for `ms` milliseconds (largest units first)."""
    if ms <= 0:
        raise ValueError(f"a Prometheus duration must be positive, got {ms} ms")
    parts = []
    for unit, size in _UNITS_MS.items():
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def scale_ms(ms: int, time_scale: float) -> int:
    """`ms` divided by `time_scale`, rounded to whole milliseconds (at least 1)."""
    return max(1, round(ms / time_scale))

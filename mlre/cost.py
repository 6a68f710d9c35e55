"""What a run cost, estimated: wall time on a node times that node type's hourly price.

The prices are estimates (Settings.instance_hourly_usd: list prices, no discounts), so every
figure says so; a run on an unknown node type gets no figure rather than a guessed one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostEstimate:
    """Seconds on one node of `instance_type` and, when its price is known, the USD estimate."""

    instance_type: str
    seconds: float
    hourly_usd: float | None
    usd: float | None

    @property
    def label(self) -> str:
        """One line for an artifact: '$0.0123 (est., 44.0 s on g5.xlarge at $1.006/h)'."""
        if self.usd is None:
            where = self.instance_type or "an unknown node type"
            return f"not estimated ({self.seconds:.1f} s on {where}: no hourly price)"
        return (
            f"${self.usd:.4f} (est., {self.seconds:.1f} s on {self.instance_type} "
            f"at ${self.hourly_usd:.3f}/h)"
        )


def estimate_cost(seconds: float, instance_type: str, prices: dict[str, float]) -> CostEstimate:
    """The estimate for `seconds` on `instance_type`; no figure when `prices` lacks its price."""
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    hourly = prices.get(instance_type) if instance_type else None
    usd = None if hourly is None else seconds / 3600.0 * hourly
    return CostEstimate(instance_type, seconds, hourly, usd)


def total_usd(estimates: list[CostEstimate]) -> float | None:
    """Sum of the known figures; None when none is known (never a partial sum shown as 0)."""
    known = [e.usd for e in estimates if e.usd is not None]
    return sum(known) if known else None


def cost_rows(
    stage_seconds: dict[str, float], instance_type: str, prices: dict[str, float]
) -> list[dict[str, str]]:
    """Table rows (stage, seconds, estimated USD) for stages that ran on one node, and a total."""
    estimates = {
        stage: estimate_cost(s, instance_type, prices) for stage, s in stage_seconds.items()
    }
    rows = [
        {"stage": stage, "seconds": f"{e.seconds:.1f}", "estimated_usd": _usd(e.usd)}
        for stage, e in estimates.items()
    ]
    total_seconds = sum(e.seconds for e in estimates.values())
    total = total_usd(list(estimates.values()))
    rows.append({"stage": "total", "seconds": f"{total_seconds:.1f}", "estimated_usd": _usd(total)})
    return rows


def _usd(value: float | None) -> str:
    return "unknown (no price for this node type)" if value is None else f"{value:.4f}"

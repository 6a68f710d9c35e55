"""The last-resort scorer: a logistic of the amount over the customer's 30-day mean amount."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mlre.serving_config import RuleConfig

RULE_VERSION = "rule"
AVG_FEATURE = "avg_amount_30d"


def _finite_positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def rule_score(amount: float, features: Mapping[str, Any], config: RuleConfig) -> float:
    """Fraud probability from the amount ratio alone; needs no model and no feature store."""
    average = _finite_positive(features.get(AVG_FEATURE)) or config.default_avg_amount
    logit = config.intercept + config.ratio_coef * max(float(amount), 0.0) / average
    # Clip so exp() never overflows on absurd amounts.
    return 1.0 / (1.0 + math.exp(-max(min(logit, 50.0), -50.0)))

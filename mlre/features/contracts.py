"""Feature contracts: value ranges, allowed categories and nullability, declared on Feast fields.

A contract lives next to the field it constrains, as Field tags, so any Feast repository can
declare one without importing this package:

    Field(name="night_share", dtype=Float64, tags={"contract:min": "0", "contract:max": "1"})
    Field(name="channel", dtype=String,
          tags={"contract:categories": '["web", "pos"]', "contract:nullable": "false"})

or, with this package installed, `tags=contract(min=0, max=1)`. Source validation reads the tags
back from the registry (`field_contract`), so the registered definitions are the contract.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlre.errors import FeatureStoreError

MIN_TAG = "contract:min"
MAX_TAG = "contract:max"
CATEGORIES_TAG = "contract:categories"
NULLABLE_TAG = "contract:nullable"
TAGS = (MIN_TAG, MAX_TAG, CATEGORIES_TAG, NULLABLE_TAG)
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class FieldContract:
    """What a field's values must satisfy (None: not constrained)."""

    low: float | None = None
    high: float | None = None
    categories: tuple[str, ...] | None = None
    nullable: bool = True

    @property
    def bounds(self) -> tuple[float, float] | None:
        """(low, high) with an open side as -inf / inf, or None when neither is set."""
        if self.low is None and self.high is None:
            return None
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        return (low, high)


def contract(
    *,
    min: float | None = None,
    max: float | None = None,
    categories: Sequence[str] | None = None,
    nullable: bool = True,
) -> dict[str, str]:
    """Field tags declaring a contract (`Field(..., tags=contract(min=0, max=1))`)."""
    tags: dict[str, str] = {}
    if min is not None:
        tags[MIN_TAG] = repr(float(min))
    if max is not None:
        tags[MAX_TAG] = repr(float(max))
    if categories is not None:
        tags[CATEGORIES_TAG] = json.dumps(list(categories))
    if not nullable:
        tags[NULLABLE_TAG] = "false"
    return tags


def _bad_tag(where: str, tag: str, value: str, expected: str) -> FeatureStoreError:
    return FeatureStoreError(
        f"{where}: tag {tag}={value!r} is not {expected}; fix the Field's tags in the feature "
        "repo and apply it again (mlre apply)."
    )


def _number(where: str, tag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if math.isnan(number):
        raise _bad_tag(where, tag, value, 'a number (e.g. "0" or "1e6")')
    return number


def _categories(where: str, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed) or not parsed:
        expected = 'a non-empty JSON list of strings (["a", "b"])'
        raise _bad_tag(where, CATEGORIES_TAG, value, expected)
    return tuple(parsed)


def parse_contract(tags: dict[str, str], *, where: str) -> FieldContract:
    """The contract a field's tags declare; a malformed tag is a FeatureStoreError naming it."""
    low = _number(where, MIN_TAG, tags.get(MIN_TAG))
    high = _number(where, MAX_TAG, tags.get(MAX_TAG))
    if low is not None and high is not None and low > high:
        raise FeatureStoreError(
            f"{where}: {MIN_TAG}={low} is above {MAX_TAG}={high}; swap or fix them in the "
            "feature repo and apply it again (mlre apply)."
        )
    nullable_text = tags.get(NULLABLE_TAG, "true").strip().lower()
    if nullable_text not in _BOOLEANS:
        raise _bad_tag(where, NULLABLE_TAG, tags[NULLABLE_TAG], '"true" or "false"')
    return FieldContract(
        low=low,
        high=high,
        categories=_categories(where, tags.get(CATEGORIES_TAG)),
        nullable=_BOOLEANS[nullable_text],
    )

"""Which model answers an entity: sticky canary split over the current ModelSet."""

from __future__ import annotations

from mlre.canary import in_canary
from serving.models import LoadedModel, ModelSet

CHAMPION = "champion"
CANARY = "canary"
FALLBACK = "fallback"


def choose(models: ModelSet, key: object) -> tuple[LoadedModel | None, str]:
    """(model, route) for an entity key; (previous champion or None, "fallback") without one."""
    if models.champion is None:
        return models.previous, FALLBACK
    if models.canary is not None and in_canary(key, models.canary_share):
        return models.canary, CANARY
    return models.champion, CHAMPION

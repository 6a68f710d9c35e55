"""Request and response models of /predict (pydantic: FastAPI validates and documents them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Instance(BaseModel):
    """One entity to score: its join keys and the request-time values its feature service needs.

    The fields below are the demo's (the fraud services join on customer_id and need amount);
    any other service's keys and request values are sent as extra fields, by their Feast names,
    and checked against the served model's feature service (a missing or mistyped one is a 422
    naming it).
    """

    model_config = ConfigDict(extra="allow")

    customer_id: int | None = Field(None, description="Entity key of the demo's services.")
    amount: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Transaction amount (demo services)."
    )
    request_id: str | None = Field(None, max_length=128, description="Caller's id (else one).")

    def value(self, name: str) -> object:
        """A field by its Feast name, declared or extra (None when absent)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name)


class PredictRequest(BaseModel):
    """A batch of instances (at most ServingConfig.max_instances)."""

    instances: list[Instance] = Field(min_length=1)


class Prediction(BaseModel):
    request_id: str
    customer_id: int | None = None
    keys: dict[str, int | str | None] = Field(
        default_factory=dict, description="The entity's join keys, as sent."
    )
    score: float
    model_version: str
    route: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]

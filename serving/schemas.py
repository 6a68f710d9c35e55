"""Request and response models of /predict (pydantic: FastAPI validates and documents them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Instance(BaseModel):
    """One entity to score: its key and the request-time values its feature service needs."""

    # Other feature services may need other request values: keep unknown fields, pass them on.
    model_config = ConfigDict(extra="allow")

    customer_id: int = Field(description="Entity key (Feast join key).")
    amount: float = Field(ge=0, allow_inf_nan=False, description="Transaction amount.")
    request_id: str | None = Field(None, max_length=128, description="Caller's id (else one).")


class PredictRequest(BaseModel):
    """A batch of instances (at most ServingConfig.max_instances)."""

    instances: list[Instance] = Field(min_length=1)


class Prediction(BaseModel):
    request_id: str
    customer_id: int
    score: float
    model_version: str
    route: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]

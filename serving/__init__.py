"""Online prediction service: FastAPI over Feast online features and MLflow-aliased models."""

from __future__ import annotations

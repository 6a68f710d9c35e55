"""Small helpers the flow modules share: settings and stores opened inside tasks."""

from __future__ import annotations

from pathlib import Path

from feast import FeatureStore

from mlre.features.store import open_store
from mlre.settings import Settings, apply_runtime_env, get_settings


def runtime_settings() -> Settings:
    """Settings for this process, with the runtime environment exported (idempotent)."""
    settings = get_settings()
    apply_runtime_env(settings, with_clients=False)
    return settings


def store_for(repo_path: str | None, store_profile: str | None) -> FeatureStore:
    """Open the feature store inside a task (tasks may run in other processes)."""
    settings = runtime_settings()
    return open_store(settings, Path(repo_path) if repo_path else None, store_profile)

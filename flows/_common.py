"""Small helpers the flow modules share: settings and stores opened inside tasks.

Every task in flows/ sets `cache_policy=NO_CACHE`: they read and write external state (stores,
registry, lake), so a cached result would be wrong, and Prefect's default policy hashes every
input to build the key, DataFrames included, on every call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from feast import FeatureStore
from prefect.states import State

from mlre.errors import MlreError, ServiceUnavailableError
from mlre.features.store import open_store
from mlre.settings import Settings, apply_runtime_env, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


def runtime_settings() -> Settings:
    """Settings for this process, with the runtime environment exported (idempotent)."""
    settings = get_settings()
    apply_runtime_env(settings, with_clients=False)
    return settings


def store_for(repo_path: str | None, store_profile: str | None) -> FeatureStore:
    """Open the feature store inside a task (tasks may run in other processes)."""
    settings = runtime_settings()
    return open_store(settings, Path(repo_path) if repo_path else None, store_profile)


def transient_only(task: object, task_run: object, state: State) -> bool:
    """Retry infrastructure hiccups (server unreachable), never user-fixable errors (bad data)."""
    try:
        state.result()
    except ServiceUnavailableError:
        return True
    except MlreError:
        return False
    except Exception:
        return True
    return False


def mlflow_client() -> MlflowClient:
    """An MLflow client on the configured tracking server."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=runtime_settings().mlflow_tracking_uri)


def load_model_version(model_name: str, version: str) -> Any:
    """The scikit-learn pipeline of one registered version."""
    from mlre.inference import load_version

    return load_version(runtime_settings().mlflow_tracking_uri, model_name, version)

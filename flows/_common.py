"""Small helpers the flow modules share: the server-task decorator, the parameters every flow
names its model and feature store with, and the clients and stores opened inside tasks.

Every task in flows/ sets `cache_policy=NO_CACHE`: they read and write external state (stores,
registry, lake), so a cached result would be wrong, and Prefect's default policy hashes every
input to build the key, DataFrames included, on every call. The one exception is deliberate and
narrow: flows/resume.py gives a few steps a key scoped to their run, so that a retry of that run
reads back what it finished.

Tasks read the settings object (`get_settings()`) and hand its values to the core explicitly;
none of them exports anything into `os.environ`. The process environment is set by whoever
starts the process: the `mlre` CLI, the worker `mlre deploy` starts, the flows image, the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from feast import FeatureStore
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from pydantic import BaseModel, Field

from mlre.data.lake import lake_location
from mlre.errors import MlreError, ServiceUnavailableError
from mlre.features.store import open_store
from mlre.settings import StoreProfile, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

P = ParamSpec("P")
R = TypeVar("R")


# Flow parameter models inherit these. Pydantic lists the last base's fields first, so a model
# declared `(LabelParams, ModelParams, StoreParams)` shows repo_path, store_profile, model_name,
# label_source, then its own fields, in that order, in the Prefect UI's run form.


class StoreParams(BaseModel):
    """Which Feast repository and store profile a flow opens (defaults: the settings')."""

    repo_path: str | None = Field(None, description="Feast repo (default: MLRE_FEATURE_REPO).")
    store_profile: StoreProfile | None = Field(
        None, description="Feast store profile (default: MLRE_STORE_PROFILE)."
    )


class ModelParams(BaseModel):
    """Which registered model a flow works on (default: the settings')."""

    model_name: str | None = Field(None, description="Registered model (default: MLRE_MODEL_NAME).")


class LabelParams(BaseModel):
    """Where a flow reads the label events (transactions) from."""

    label_source: str = Field(
        "sources/transactions",
        description="Label events: a folder under the lake (MLRE_OFFLINE_URI), or a path or URI.",
    )


def lake_source(relative: str) -> str:
    """A source folder under the offline lake (local or s3://), or an absolute path / URI."""
    return lake_location(get_settings().lake_uri, relative)


def store_for(repo_path: str | None, store_profile: str | None) -> FeatureStore:
    """Open the feature store inside a task (tasks may run in other processes)."""
    return open_store(get_settings(), Path(repo_path) if repo_path else None, store_profile)


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


def server_task(
    name: str,
    *,
    retries: int = 2,
    retry_delay_seconds: Sequence[float] = (2, 10),
    **options: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """`@task` for a step that calls a server (MLflow, the stores, the lake): no cache, and
    retries only for transient failures (`transient_only`); other `@task` options pass through."""
    return task(
        name=name,
        cache_policy=NO_CACHE,
        retries=retries,
        retry_delay_seconds=list(retry_delay_seconds),
        retry_condition_fn=transient_only,
        **options,
    )


def mlflow_client() -> MlflowClient:
    """An MLflow client on the configured tracking server."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=get_settings().mlflow_tracking_uri)


def load_model_version(model_name: str, version: str) -> Any:
    """The scikit-learn pipeline of one registered version."""
    from mlre.inference import load_version

    return load_version(get_settings().mlflow_tracking_uri, model_name, version)

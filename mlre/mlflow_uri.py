"""MLflow client helpers: the global tracking URI for one block, and "the server did not answer"."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlre.errors import ServiceUnavailableError


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Some MLflow calls ignore the URI they are given: `log_model` uses the fluent API and
    `mlflow-artifacts:/` locations resolve against the global URI. Set it for one block only.

    Restoring with `set_tracking_uri(get_tracking_uri())` would turn an environment default into a
    sticky global that outlives later changes of MLFLOW_TRACKING_URI, so the module global and the
    environment variable are saved and put back separately.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_global, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_global)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def server_unreachable(exc: BaseException) -> bool:
    """Whether an MLflow client error means no answer (refused, reset, timed out) rather than an
    answer the caller must act on (not found, invalid): MLflow raises both as MlflowException."""
    import requests
    from mlflow.exceptions import RestException

    if isinstance(exc, RestException):
        return False
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, requests.exceptions.RequestException)


@contextmanager
def mlflow_answering(tracking_uri: str, doing: str, then: str) -> Iterator[None]:
    """Turn "the MLflow server did not answer" while `doing` into a ServiceUnavailableError that
    names the server and says what to do (`then`); every other error passes unchanged."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if not server_unreachable(exc):
            raise
        raise ServiceUnavailableError(
            f"The MLflow server {tracking_uri} did not answer while {doing} ({exc.message}). "
            f"Check that it runs (mlre status) and that MLRE_MLFLOW_URI points at it, then {then}."
        ) from exc

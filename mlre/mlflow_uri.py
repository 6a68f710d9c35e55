"""Point MLflow's global (fluent) tracking URI somewhere for one block, then restore it exactly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


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

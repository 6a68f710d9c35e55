"""Flow `batch-inference`: score a time window with the champion, append to the prediction log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from flows import slis
from flows._common import (
    ModelParams,
    StoreParams,
    lake_source,
    load_model_version,
    server_task,
    store_for,
)
from flows.runners import partition_runner
from mlre import inference, prediction_log
from mlre.data.lake import read_events
from mlre.settings import get_settings


class BatchInferenceParams(ModelParams, StoreParams):
    """Which window to score, with which model."""

    request_source: str = Field(
        "sources/transactions", description="Events to score, under the lake."
    )
    start: datetime | None = Field(None, description="Window start (default: end - 1 day).")
    end: datetime | None = Field(
        None, description="Window end, exclusive (default: the last UTC midnight before now)."
    )
    now: datetime | None = Field(
        None, description="The clock: default window end, predicted_at, log partition day "
        "(default: the real clock; tests pass a fixed instant).",
    )  # fmt: skip
    drop_columns: list[str] = Field(
        default_factory=lambda: ["is_fraud"],
        description="Columns never sent to the model (labels).",
    )
    partitions: int = Field(
        1,
        ge=1,
        le=256,
        description="Row partitions scored as separate tasks (MLRE_TASK_RUNNER runs them); "
        "each loads the model once.",
    )


@task(cache_policy=NO_CACHE, name="load-requests")
def load_requests(params: BatchInferenceParams) -> pd.DataFrame:
    """The events of the window, without their labels."""
    # Default: the previous full UTC day, what a daily batch job scores.
    now = params.now or datetime.now(UTC)
    end = params.end or now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = params.start or end - timedelta(days=1)
    events = read_events(lake_source(params.request_source), start=start, end=end)
    return events.drop(columns=[c for c in params.drop_columns if c in events.columns])


@server_task("resolve-champion", retries=2, retry_delay_seconds=[2, 10])
def resolve_champion(params: BatchInferenceParams) -> tuple[str, str]:
    """(version, feature service) of the champion, read once so every partition scores with it."""
    settings = get_settings()
    model_name = params.model_name or settings.model_name
    return inference.champion_ref(settings.mlflow_tracking_uri, model_name)


@server_task("score-partition", retries=2, retry_delay_seconds=[2, 10])
def score_partition(
    params: BatchInferenceParams,
    version: str,
    service: str,
    requests: pd.DataFrame,
    predicted_at: datetime,
) -> pd.DataFrame:
    """One partition's scores with point-in-time Feast features (model and store opened here:
    the task may run in another process)."""
    model_name = params.model_name or get_settings().model_name
    model = load_model_version(model_name, version)
    store = store_for(params.repo_path, params.store_profile)
    return inference.score_frame(
        store, model, service, requests, model_name=model_name, model_version=version,
        predicted_at=predicted_at, require_served=False,
    )  # fmt: skip


def score_requests(params: BatchInferenceParams, requests: pd.DataFrame) -> pd.DataFrame:
    """The window's scores, partition by partition on the settings' task runner, in row order."""
    version, service = resolve_champion(params)
    # One clock for every partition: their rows carry the same predicted_at.
    predicted_at = params.now or datetime.now(UTC)
    with partition_runner() as (runner, _):
        futures = runner.map(
            score_partition,
            {
                "params": unmapped(params),
                "version": unmapped(version),
                "service": unmapped(service),
                "requests": inference.row_partitions(requests, params.partitions),
                "predicted_at": unmapped(predicted_at),
            },
        )
        parts = futures.result()
    return inference.concat_scored(parts, service)


@server_task("write-prediction-log", retries=2, retry_delay_seconds=[2, 10])
def write_log(params: BatchInferenceParams, predictions: pd.DataFrame) -> str:
    """Append one partition to the prediction log (local lake or MLRE_PREDICTION_LOG_URI)."""
    settings = get_settings()
    path = prediction_log.write_predictions(
        predictions,
        settings.prediction_log_root,
        params.model_name or settings.model_name,
        run_id=str(flow_run.get_id() or "local"),
        key_columns=predictions.attrs.get(inference.KEY_COLUMNS, prediction_log.DEFAULT_KEYS),
        now=params.now,
    )
    return str(path)


@flow(name="batch-inference", log_prints=True, **slis.flow_run_hooks())
def batch_inference(params: BatchInferenceParams | None = None) -> dict[str, object]:
    """Score a window with the champion and write the prediction log partition."""
    params = params or BatchInferenceParams()
    requests = load_requests(params)
    scored = score_requests(params, requests)
    path = write_log(params, scored) if len(scored) else None
    summary = {
        "requests": len(requests),
        "scored": len(scored),
        "dropped_no_features": scored.attrs.get(inference.ROWS_DROPPED, 0),
        "model_version": scored["model_version"].iloc[0] if len(scored) else None,
        "mean_score": round(float(scored["score"].mean()), 5) if len(scored) else None,
        "partition": path,
    }
    create_table_artifact(
        key="batch-inference",
        table=[summary],
        description="Rows scored and where the prediction log partition landed.",
    )
    return summary

"""Batch inference: load the champion, score point-in-time features as prediction-log rows.

`score_frame` returns rows in the prediction log's shape (see mlre.prediction_log, which writes
and reads them) with route "batch".
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore

from mlre.data.generator import TIMESTAMP_COLUMN
from mlre.errors import InferenceError
from mlre.features.services import (
    as_model_frame,
    service_columns,
    service_features,
    unusable_inputs,
)
from mlre.features.store import get_feature_service
from mlre.mlflow_uri import global_tracking_uri
from mlre.model_files import load_sklearn_model

log = logging.getLogger(__name__)

FEATURE_SERVICE_TAG = "feature_service"
BATCH_ROUTE = "batch"

# `frame.attrs` keys score_frame fills: how many rows came in, were scored, Feast dropped, and
# the entity keys the rows carry (the prediction log's key columns).
KEY_COLUMNS = "key_columns"
ROWS_IN = "rows_in"
ROWS_SCORED = "rows_scored"
ROWS_DROPPED = "rows_dropped"

_ROW_ID = "_mlre_row_id"


# --------------------------------------------------------------------------------------------
# Loading the champion
# --------------------------------------------------------------------------------------------


def load_champion(tracking_uri: str, model_name: str) -> tuple[Any, str, str]:
    """(model, version, feature service name) of the model's current champion."""
    version, service = champion_ref(tracking_uri, model_name)
    # Load by number, not by alias: the alias may move between the two reads.
    return load_version(tracking_uri, model_name, version), version, service


def champion_ref(tracking_uri: str, model_name: str) -> tuple[str, str]:
    """(version, feature service name) of the model's current champion, without loading it."""
    from mlflow import MlflowClient

    from mlre.registry import champion_version

    client = MlflowClient(tracking_uri)
    version = champion_version(client, model_name)
    if version is None:
        raise InferenceError(
            f"Model {model_name!r} has no champion yet at {tracking_uri}: run the ml-pipeline "
            f"flow or `mlre promote {model_name} VERSION` first."
        )
    return str(version.version), _feature_service_of(client, version)


def _feature_service_of(client: Any, version: Any) -> str:
    """The `feature_service` tag of the model version, else of the run that logged it."""
    service = (version.tags or {}).get(FEATURE_SERVICE_TAG)
    if not service and version.run_id:
        service = client.get_run(version.run_id).data.tags.get(FEATURE_SERVICE_TAG)
    if not service:
        raise InferenceError(
            f"Model {version.name!r} version {version.version} has no {FEATURE_SERVICE_TAG!r} tag "
            "(on the version or its run); the training flow sets it. Tag the version with the "
            "Feast feature service it was trained on."
        )
    return str(service)


def load_version(tracking_uri: str, model_name: str, version: str) -> Any:
    """Download one model version into a temp dir and load it into memory (skops, no pickle)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = f"models:/{model_name}/{version}"
    try:
        with (
            global_tracking_uri(tracking_uri),
            tempfile.TemporaryDirectory(prefix="mlre-model-") as tmp,
        ):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri
            )
            return load_sklearn_model(Path(local), f"Model {model_name!r} version {version}")
    except MlflowException as exc:
        raise InferenceError(
            f"Could not load {uri} from {tracking_uri}: {exc.message}. Check that the version "
            "was logged with the sklearn flavor and its artifacts are reachable."
        ) from exc


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _service(store: FeatureStore, feature_service: str | FeatureService) -> FeatureService:
    if isinstance(feature_service, FeatureService):
        return feature_service
    return get_feature_service(store, feature_service)


def _check_entities(entities: pd.DataFrame, keys: list[str], request: list[str]) -> None:
    """Fail before Feast does, naming the missing or naive columns."""
    missing = [c for c in [*keys, TIMESTAMP_COLUMN, *request] if c not in entities.columns]
    if missing:
        raise InferenceError(
            f"Entity frame lacks column(s) {missing}; it needs the join keys {keys}, "
            f"{TIMESTAMP_COLUMN!r} and the request columns {request}."
        )
    if not isinstance(entities[TIMESTAMP_COLUMN].dtype, pd.DatetimeTZDtype):
        raise InferenceError(
            f"Entity column {TIMESTAMP_COLUMN!r} is {entities[TIMESTAMP_COLUMN].dtype}; "
            "pass timezone-aware UTC timestamps (Series.dt.tz_localize('UTC'))."
        )


def model_inputs(model: Any, service: FeatureService) -> list[str]:
    """The columns the model was fitted on (sklearn `feature_names_in_`), else the service's."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    return [f.name for p in service.feature_view_projections for f in p.features]


def _retrieve(
    store: FeatureStore, service: FeatureService, entity_df: pd.DataFrame
) -> pd.DataFrame:
    """Point-in-time features for every entity row Feast can serve (it drops the others)."""
    try:
        job = store.get_historical_features(entity_df=entity_df, features=service)
        return job.to_df()
    except Exception as exc:  # Feast raises many unrelated types; name the service and rows
        raise InferenceError(
            f"Feast could not retrieve features of service {service.name!r} for "
            f"{len(entity_df)} rows: {exc}"
        ) from exc


def _batch_features(store: FeatureStore, service: FeatureService) -> set[str]:
    """Features of the service that come from batch views (not computed at request time)."""
    batch_views = {view.name for view in store.list_feature_views()}
    return {
        f.name
        for p in service.feature_view_projections
        if p.name in batch_views
        for f in p.features
    }


def _served_rows(
    store: FeatureStore, service: FeatureService, features: pd.DataFrame, inputs: list[str]
) -> pd.DataFrame:
    """Model inputs by row id, for rows that got at least one batch feature value.

    Depending on the offline store, Feast drops a row with no value within the TTL or returns
    it with nulls; both count as not served, so every store reports the same thing.
    """
    served = features[[_ROW_ID, *inputs]].drop_duplicates(_ROW_ID).set_index(_ROW_ID)
    batch = [c for c in inputs if c in _batch_features(store, service)]
    if batch:
        served = served[served[batch].notna().any(axis=1)]
    return served.sort_index()


def _scores(model: Any, inputs: pd.DataFrame, label: str) -> np.ndarray:
    """Probability of the positive class (or the raw prediction for non-classifiers)."""
    try:
        if hasattr(model, "predict_proba"):
            return np.asarray(model.predict_proba(inputs)[:, 1], dtype=np.float64)
        return np.asarray(model.predict(inputs), dtype=np.float64)
    except Exception as exc:  # sklearn raises ValueError/TypeError/... on bad inputs
        raise InferenceError(
            f"{label} failed to score {len(inputs)} rows with columns {list(inputs.columns)}: {exc}"
        ) from exc


def _request_ids(entities: pd.DataFrame, column: str | None) -> pd.Series:
    """Request ids from a column (e.g. transaction_id), else fresh random ones."""
    if column is None and "request_id" in entities.columns:
        column = "request_id"
    if column is not None:
        if column not in entities.columns:
            raise InferenceError(f"request_id_column {column!r} is not in the entity frame.")
        return entities[column].astype(str)
    return pd.Series([uuid.uuid4().hex for _ in range(len(entities))], index=entities.index)


def _utc(moment: datetime) -> pd.Timestamp:
    """A timestamp in UTC; a naive one is taken to be UTC already."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _no_predictions(keys: list[str], inputs: list[str]) -> pd.DataFrame:
    """The prediction-log frame of zero rows, with every column `score_frame` writes."""
    columns = [*keys, TIMESTAMP_COLUMN, "request_id", "score", "model_name", "model_version"]
    out = pd.DataFrame(columns=[*columns, "route", "predicted_at", *inputs])
    out.attrs.update({ROWS_IN: 0, ROWS_SCORED: 0, ROWS_DROPPED: 0, KEY_COLUMNS: keys})
    return out


def check_served(service: str, rows_in: int, rows_scored: int) -> None:
    """InferenceError when Feast served none of a window's rows."""
    if rows_in and not rows_scored:
        raise InferenceError(
            f"Feast returned no features of service {service!r} for any of the {rows_in} "
            "rows; materialize/backfill the sources for this window or check its timestamps."
        )


def score_frame(
    store: FeatureStore,
    model: Any,
    feature_service: str | FeatureService,
    entities: pd.DataFrame,
    *,
    model_name: str,
    model_version: str,
    route: str = BATCH_ROUTE,
    request_id_column: str | None = None,
    predicted_at: datetime | None = None,
    require_served: bool = True,
) -> pd.DataFrame:
    """Prediction-log rows for `entities` (keys, event_timestamp, request columns).

    Rows Feast cannot serve (no batch feature value within the views' TTL) are not scored; the
    counts are in `frame.attrs` (ROWS_IN, ROWS_SCORED, ROWS_DROPPED) and logged. Every row
    dropped is an InferenceError: the features are stale or the window is wrong.
    `require_served=False` (one partition of a window): leave that check to `concat_scored`.
    """
    service = _service(store, feature_service)
    keys, request = service_columns(store, service)
    _check_entities(entities, keys, request)
    frame = entities.reset_index(drop=True)
    if frame.empty:  # a window without traffic: nothing to score is not an error
        log.info("No rows to score for model %s v%s.", model_name, model_version)
        return _no_predictions(keys, model_inputs(model, service))
    entity_df = frame[[*keys, TIMESTAMP_COLUMN, *request]].copy()
    # Feast neither keeps row order nor rows without features: join back on our own row id.
    entity_df[_ROW_ID] = np.arange(len(entity_df), dtype=np.int64)
    features = _retrieve(store, service, entity_df)
    inputs = model_inputs(model, service)
    typed = service_features(store, service)
    problem = unusable_inputs(typed, used=set(inputs))
    if problem:
        raise InferenceError(
            f"Model {model_name} v{model_version}, service {service.name!r}: {problem}"
        )
    absent = [c for c in inputs if c not in features.columns]
    if absent:
        raise InferenceError(
            f"Model {model_name} v{model_version} needs {absent}, which feature service "
            f"{service.name!r} does not return; score with the service it was trained on."
        )
    served = _served_rows(store, service, features, inputs)
    row_ids = served.index.to_numpy()
    dropped = len(frame) - len(row_ids)
    if require_served:
        check_served(service.name, len(frame), len(row_ids))
    kept = frame.iloc[served.index.to_numpy()].reset_index(drop=True)
    out = kept[keys].copy()
    out[TIMESTAMP_COLUMN] = kept[TIMESTAMP_COLUMN].dt.tz_convert("UTC")
    out["request_id"] = _request_ids(kept, request_id_column).to_numpy()
    x = as_model_frame(served[inputs].reset_index(drop=True), typed)
    out["score"] = _scores(model, x, f"Model {model_name} v{model_version}")
    out["model_name"] = model_name
    out["model_version"] = str(model_version)
    out["route"] = route
    out["predicted_at"] = _utc(predicted_at or datetime.now(UTC))
    out = pd.concat([out, x], axis=1)
    out.attrs.update(
        {ROWS_IN: len(frame), ROWS_SCORED: len(out), ROWS_DROPPED: dropped, KEY_COLUMNS: keys}
    )
    if dropped:
        log.warning(
            "Feature service %r served %d of %d rows; %d rows had no feature value in TTL and "
            "were not scored.",
            service.name,
            len(out),
            len(frame),
            dropped,
        )
    return out


# --------------------------------------------------------------------------------------------
# Partitions of a window (scored as separate tasks, possibly in other processes)
# --------------------------------------------------------------------------------------------


def row_partitions(frame: pd.DataFrame, partitions: int) -> list[pd.DataFrame]:
    """`frame` cut into at most `partitions` contiguous, non-empty slices in row order (one
    empty slice for an empty frame), so the scored slices concatenate back in row order."""
    if partitions < 1:
        raise InferenceError(f"partitions must be at least 1, not {partitions}.")
    count = max(1, min(partitions, len(frame)))
    bounds = np.linspace(0, len(frame), count + 1).round().astype(int)
    return [frame.iloc[start:end] for start, end in itertools.pairwise(bounds)]


def concat_scored(parts: list[pd.DataFrame], service: str) -> pd.DataFrame:
    """The scored partitions of a window as one frame in row order, with the window's counts;
    an InferenceError when Feast served none of its rows (as `score_frame` on the whole)."""
    rows_in = sum(p.attrs[ROWS_IN] for p in parts)
    rows_scored = sum(p.attrs[ROWS_SCORED] for p in parts)
    check_served(service, rows_in, rows_scored)
    # Empty slices would turn typed columns into objects; the first part keeps the schema.
    kept = [p for p in parts if len(p)] or parts[:1]
    out = pd.concat(kept, ignore_index=True)
    out.attrs = {
        ROWS_IN: rows_in,
        ROWS_SCORED: rows_scored,
        ROWS_DROPPED: sum(p.attrs[ROWS_DROPPED] for p in parts),
        KEY_COLUMNS: parts[0].attrs[KEY_COLUMNS],
    }
    return out

"""Batch inference: load the champion, score point-in-time features, keep a prediction log.

The prediction log is a contract other code reads (drift, monitoring, the online service writes the
same shape). One parquet file per scoring call under `<lake>/predictions/<model>/`, columns:

- the entity key columns (e.g. `customer_id` int64),
- `event_timestamp` timestamp[us, UTC]: the time the prediction is for,
- `request_id` string, `score` float64, `model_name` string, `model_version` string,
- `route` string ("batch" here; the online service writes "champion" / "canary" / "fallback"),
- `predicted_at` timestamp[us, UTC],
- the model's input feature columns under their own names (drift compares them).

`<lake>` is a local folder (`<home>/lake` by default) or an object-store URI such as
`s3://bucket/prefix` (`Settings.prediction_log_root`); pyarrow.fs reads and writes both. Local files
are written to a hidden temp file, fsynced and renamed; an object is uploaded whole and only
appears once complete. Either way readers never see half a file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from feast import FeatureService, FeatureStore

from mlre.data.generator import ENTITY_COLUMN, TIMESTAMP_COLUMN
from mlre.errors import MlreError
from mlre.features.store import get_feature_service
from mlre.mlflow_uri import global_tracking_uri

log = logging.getLogger(__name__)

TIMESTAMP = pa.timestamp("us", tz="UTC")
# The fixed part of the prediction log; keys come first, features last.
PREDICTION_COLUMNS: dict[str, pa.DataType] = {
    TIMESTAMP_COLUMN: TIMESTAMP,
    "request_id": pa.string(),
    "score": pa.float64(),
    "model_name": pa.string(),
    "model_version": pa.string(),
    "route": pa.string(),
    "predicted_at": TIMESTAMP,
}
DEFAULT_KEYS: tuple[str, ...] = (ENTITY_COLUMN,)
FEATURE_SERVICE_TAG = "feature_service"
BATCH_ROUTE = "batch"

# `frame.attrs` keys score_frame fills: how many rows came in, were scored, Feast dropped.
ROWS_IN = "rows_in"
ROWS_SCORED = "rows_scored"
ROWS_DROPPED = "rows_dropped"

_ROW_ID = "_mlre_row_id"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class InferenceError(MlreError):
    """Scoring or writing/reading the prediction log failed in a way the user can fix."""


# --------------------------------------------------------------------------------------------
# Loading the champion
# --------------------------------------------------------------------------------------------


def load_champion(tracking_uri: str, model_name: str) -> tuple[Any, str, str]:
    """(model, version, feature service name) of the model's current champion."""
    from mlflow import MlflowClient

    from mlre.registry import champion_version

    client = MlflowClient(tracking_uri)
    version = champion_version(client, model_name)
    if version is None:
        raise InferenceError(
            f"Model {model_name!r} has no champion yet at {tracking_uri}: run the ml-pipeline "
            f"flow or `mlre promote {model_name} VERSION` first."
        )
    service = _feature_service_of(client, version)
    # Load by number, not by alias: the alias may move between the two reads.
    return load_version(tracking_uri, model_name, version.version), version.version, service


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
    """Download one model version into a temp dir and load it into memory."""
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
            return mlflow.sklearn.load_model(local)
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


def required_columns(store: FeatureStore, service: FeatureService) -> tuple[list[str], list[str]]:
    """(join keys, request-time columns) the entity frame must carry for a service."""
    names = {p.name for p in service.feature_view_projections}
    keys: list[str] = []
    for view in store.list_feature_views():
        if view.name in names:
            keys += [k for k in view.join_keys if k not in keys]
    request: list[str] = []
    for odfv in store.list_on_demand_feature_views():
        if odfv.name in names:
            for source in odfv.source_request_sources.values():
                request += [f.name for f in source.schema if f.name not in request]
    return keys, request


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
) -> pd.DataFrame:
    """Prediction-log rows for `entities` (keys, event_timestamp, request columns).

    Rows Feast cannot serve (no batch feature value within the views' TTL) are not scored; the
    counts are in `frame.attrs` (ROWS_IN, ROWS_SCORED, ROWS_DROPPED) and logged. Every row
    dropped is an InferenceError: the features are stale or the window is wrong.
    """
    service = _service(store, feature_service)
    keys, request = required_columns(store, service)
    _check_entities(entities, keys, request)
    frame = entities.reset_index(drop=True)
    entity_df = frame[[*keys, TIMESTAMP_COLUMN, *request]].copy()
    # Feast neither keeps row order nor rows without features: join back on our own row id.
    entity_df[_ROW_ID] = np.arange(len(entity_df), dtype=np.int64)
    features = _retrieve(store, service, entity_df)
    inputs = model_inputs(model, service)
    absent = [c for c in inputs if c not in features.columns]
    if absent:
        raise InferenceError(
            f"Model {model_name} v{model_version} needs {absent}, which feature service "
            f"{service.name!r} does not return; score with the service it was trained on."
        )
    served = _served_rows(store, service, features, inputs)
    row_ids = served.index.to_numpy()
    dropped = len(frame) - len(row_ids)
    if len(frame) and not len(row_ids):
        raise InferenceError(
            f"Feast returned no features of service {service.name!r} for any of the {len(frame)} "
            "rows; materialize/backfill the sources for this window or check its timestamps."
        )
    kept = frame.iloc[served.index.to_numpy()].reset_index(drop=True)
    out = kept[keys].copy()
    out[TIMESTAMP_COLUMN] = kept[TIMESTAMP_COLUMN].dt.tz_convert("UTC")
    out["request_id"] = _request_ids(kept, request_id_column).to_numpy()
    x = served[inputs].reset_index(drop=True)
    out["score"] = _scores(model, x, f"Model {model_name} v{model_version}")
    out["model_name"] = model_name
    out["model_version"] = str(model_version)
    out["route"] = route
    out["predicted_at"] = _utc(predicted_at or datetime.now(UTC))
    out = pd.concat([out, x], axis=1)
    out.attrs.update({ROWS_IN: len(frame), ROWS_SCORED: len(out), ROWS_DROPPED: dropped})
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
# The prediction log
# --------------------------------------------------------------------------------------------


def _check_name(kind: str, value: str) -> None:
    """Names that become file or folder names: no separators, no leading dot."""
    if not _SAFE_NAME.match(value):
        raise InferenceError(
            f"{kind} {value!r} cannot name a prediction file; use letters, digits, '_', '.', '-' "
            "and do not start with a dot."
        )


def prediction_table(frame: pd.DataFrame, key_columns: Sequence[str] = DEFAULT_KEYS) -> pa.Table:
    """The frame as an Arrow table in the prediction-log schema (keys, fixed columns, features)."""
    keys = [k for k in key_columns if k in frame.columns]
    missing = [c for c in [*key_columns, *PREDICTION_COLUMNS] if c not in frame.columns]
    if missing:
        raise InferenceError(
            f"Prediction frame lacks column(s) {missing}; build it with score_frame()."
        )
    features = [c for c in frame.columns if c not in keys and c not in PREDICTION_COLUMNS]
    table = pa.Table.from_pandas(
        frame[[*keys, *PREDICTION_COLUMNS, *features]], preserve_index=False
    )
    fields = []
    for field in table.schema:
        if field.name in keys:
            fields.append(pa.field(field.name, pa.int64()))
        elif field.name in PREDICTION_COLUMNS:
            fields.append(pa.field(field.name, PREDICTION_COLUMNS[field.name]))
        elif pa.types.is_timestamp(field.type):
            fields.append(pa.field(field.name, TIMESTAMP))
        else:
            fields.append(field)
    try:
        return table.cast(pa.schema(fields))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InferenceError(f"Prediction frame does not fit the log schema: {exc}") from exc


def _local_root(lake_dir: Path | str) -> Path | None:
    """The local folder a lake root names (a path or file:// URI); None for an object store."""
    if isinstance(lake_dir, Path) or "://" not in lake_dir:
        return Path(lake_dir)
    parts = urlsplit(lake_dir)
    return Path(parts.path) if parts.scheme == "file" else None


def _join_uri(uri: str, *names: str) -> str:
    """`uri` with path segments appended; its query (pyarrow options such as ?region=) kept."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path="/".join([parts.path.rstrip("/"), *names])))


def shown_uri(uri: str) -> str:
    """The URI for messages and return values: no user info, no query (they may hold keys)."""
    scheme, sep, rest = uri.split("?", 1)[0].partition("://")
    # rpartition, not urlsplit: a secret key with an unescaped '/' must not leak either.
    return scheme + sep + rest.rpartition("@")[2]


def predictions_dir(lake_dir: Path | str, model_name: str) -> Path | str:
    """Folder holding a model's prediction log: a Path, or a URI under an object-store root."""
    _check_name("Model name", model_name)
    local = _local_root(lake_dir)
    if local is None:
        return _join_uri(str(lake_dir), "predictions", model_name)
    return local / "predictions" / model_name


def _filesystem(folder: Path | str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a log folder from predictions_dir."""
    if isinstance(folder, Path):
        return pafs.LocalFileSystem(), str(folder)
    try:
        return pafs.FileSystem.from_uri(folder)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).replace(folder, shown_uri(folder))  # pyarrow echoes the whole URI
        raise InferenceError(
            f"Cannot open the prediction log at {shown_uri(folder)}: {reason}. Point "
            "MLRE_PREDICTION_LOG_URI at a local folder or s3://bucket/prefix (pyarrow options "
            "such as ?region=eu-west-1 may follow)."
        ) from exc


def write_predictions(
    frame: pd.DataFrame,
    lake_dir: Path | str,
    model_name: str,
    *,
    run_id: str,
    key_columns: Sequence[str] = DEFAULT_KEYS,
    now: datetime | None = None,
) -> Path | str:
    """Write one partition `part-YYYYMMDD-<run_id>.parquet` atomically; a rerun replaces it.

    `lake_dir` is the lake root: a local folder (returns the file's Path) or an object-store URI
    such as s3://bucket/prefix (returns the object's URI, without query options).
    """
    _check_name("run_id", run_id)
    table = prediction_table(frame, key_columns)
    folder = predictions_dir(lake_dir, model_name)
    day = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d")
    name = f"part-{day}-{run_id}.parquet"
    if isinstance(folder, str):
        uri = _write_object(table, folder, name)
        log.info("Wrote %d predictions of %s to %s", table.num_rows, model_name, uri)
        return uri
    target = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InferenceError(
            f"Cannot create the prediction folder {folder}: {exc}. Make it a writable directory "
            "(check MLRE_HOME or the lake mount)."
        ) from exc
    _write_atomic(table, target)
    log.info("Wrote %d predictions of %s to %s", table.num_rows, model_name, target)
    return target


def _write_atomic(table: pa.Table, target: Path) -> None:
    """Hidden temp file in the same folder, fsync, rename; nothing visible is left on failure."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except (OSError, pa.ArrowException) as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            log.warning("Could not remove temp file %s; readers ignore hidden files.", tmp)
        raise InferenceError(
            f"Could not write predictions to folder {target.parent}: {exc}. Make it writable "
            "with free space, then retry (re-run batch-inference); no partial file was left."
        ) from exc


def _write_object(table: pa.Table, folder: str, name: str) -> str:
    """Upload the whole file in one stream: an object store shows it complete or not at all."""
    filesystem, path = _filesystem(folder)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    target = shown_uri(_join_uri(folder, name))
    try:
        with filesystem.open_output_stream(f"{path}/{name}") as out:
            out.write(sink.getvalue())
    except (OSError, pa.ArrowException) as exc:
        raise InferenceError(
            f"Could not write predictions to {target}: {exc}. Check that the bucket exists and "
            "that this process's AWS credentials (IRSA role, AWS_* variables) may s3:PutObject "
            f"under {shown_uri(folder)}/, then retry; no partial object was left."
        ) from exc
    return target


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (the directory entry) across a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _empty_log(key_columns: Sequence[str]) -> pd.DataFrame:
    schema = pa.schema(
        [pa.field(k, pa.int64()) for k in key_columns]
        + [pa.field(name, kind) for name, kind in PREDICTION_COLUMNS.items()]
    )
    return schema.empty_table().to_pandas()


def _window(table: pa.Table, start: datetime | None, end: datetime | None) -> pa.Table:
    """Rows with start <= event_timestamp < end."""
    column = table[TIMESTAMP_COLUMN]
    if start is not None:
        table = table.filter(pc.greater_equal(column, pa.scalar(pd.Timestamp(start), TIMESTAMP)))
        column = table[TIMESTAMP_COLUMN]
    if end is not None:
        table = table.filter(pc.less(column, pa.scalar(pd.Timestamp(end), TIMESTAMP)))
    return table


def _is_partition(info: pafs.FileInfo) -> bool:
    """A `part-*.parquet` file; hidden temp files (`.part-...tmp`) and folders are not."""
    name = info.base_name
    is_file = info.type == pafs.FileType.File
    return is_file and name.startswith("part-") and name.endswith(".parquet")


def _check_bucket(filesystem: pafs.FileSystem, folder: str) -> None:
    """An object store lists a missing bucket as empty: say so instead of reading no rows."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return
    bucket = folder.split("/", 1)[0]
    if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"bucket {bucket!r} does not exist")


def _partitions(filesystem: pafs.FileSystem, folder: str, where: str) -> list[str]:
    """Sorted paths of a log folder's partitions; a missing folder has none."""
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        files = sorted(info.path for info in infos if _is_partition(info))
        if not files:
            _check_bucket(filesystem, folder)
    except (OSError, pa.ArrowException) as exc:
        raise InferenceError(
            f"Could not list the prediction log at {where}: {exc}. Check the bucket name "
            "(MLRE_PREDICTION_LOG_URI) and that this process's credentials may list it "
            "(s3:ListBucket)."
        ) from exc
    return files


def _read_partition(filesystem: pafs.FileSystem, path: str, where: str) -> pa.Table:
    """One partition; an unreadable one is an InferenceError naming it."""
    try:
        return pq.read_table(path, filesystem=filesystem)
    except (OSError, pa.ArrowException) as exc:
        raise InferenceError(
            f"Could not read prediction-log partition {path.rsplit('/', 1)[-1]} at {where}: "
            f"{exc}. Check read access (s3:GetObject on the prefix); a file that is not "
            "parquet has to be re-written or removed."
        ) from exc


def read_predictions(
    lake_dir: Path | str,
    model_name: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    key_columns: Sequence[str] = DEFAULT_KEYS,
) -> pd.DataFrame:
    """The prediction log of a model, optionally for start <= event_timestamp < end.

    `lake_dir` is the lake root: a local folder or an object-store URI (s3://bucket/prefix).
    """
    folder = predictions_dir(lake_dir, model_name)
    filesystem, path = _filesystem(folder)
    where = str(folder) if isinstance(folder, Path) else shown_uri(folder)
    files = _partitions(filesystem, path, where)
    if not files:
        return _empty_log(key_columns)
    tables = [_window(_read_partition(filesystem, f, where), start, end) for f in files]
    # Model versions may log different features: missing ones become nulls.
    table = pa.concat_tables(tables, promote_options="default")
    return table.to_pandas()

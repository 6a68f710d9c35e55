"""The prediction log: a contract between its writers and its readers.

The online service and batch inference write it; drift, monitoring and the canary read it. One
parquet file per write under `<lake>/predictions/<model>/`, columns:

- the entity key columns (e.g. `customer_id` int64),
- `event_timestamp` timestamp[us, UTC]: the time the prediction is for,
- `request_id` string, `score` float64, `model_name` string, `model_version` string,
- `route` string ("batch" from batch inference; the online service writes "champion" /
  "canary" / "fallback"),
- `predicted_at` timestamp[us, UTC],
- the model's input feature columns under their own names (drift compares them).

`<lake>` is a local folder (`<home>/lake` by default) or an object-store URI such as
`s3://bucket/prefix` (`Settings.prediction_log_root`); pyarrow.fs reads and writes both. Local files
are published through `mlre.atomic` (hidden temp file, fsync, rename); an object is uploaded whole
and only appears once complete. Either way readers never see half a file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlre.atomic import write_atomic
from mlre.data.generator import ENTITY_COLUMN, TIMESTAMP_COLUMN
from mlre.errors import InferenceError

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
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


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
            # Integer keys are int64 in every partition (pandas makes int32 or objects of them);
            # text keys (a seller id) stay text.
            kind = pa.int64() if _integer_like(field.type) else field.type
            fields.append(pa.field(field.name, kind))
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


def _integer_like(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_null(kind)


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
    """Publish the partition through mlre.atomic; nothing visible is left on failure."""
    try:
        write_atomic(target, lambda handle: pq.write_table(table, handle))
    except (OSError, pa.ArrowException) as exc:
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

"""Bounded, idempotent materialization into the online store.

Feast's own `materialize` loads the whole time range into memory (feast issues 2594, 6307) and
cutting the range into time windows rewrites every key once per window. Here the newest row per
entity is computed out of core by DuckDB over the parquet source (under a memory limit) for one
hash partition of the keys at a time, streamed in record batches and written through Feast's own
online-write path, so every key is written exactly once and memory stays flat however large the
range. A partition rescans the source, but only the columns it needs (0.3 s per scan at 5M rows),
which is cheaper than staging one aggregate over all keys (measured 4 s and 730 MB at 5M).
Partitions are independent units of work that any task runner can run in parallel.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.online_stores.sqlite import _table_id, adapt_datetime_epoch
from feast.utils import _convert_arrow_to_proto, to_naive_utc
from filelock import FileLock

from mlre.data.files import ParquetListing, is_remote, require_parquet
from mlre.data.lake import WindowError, check_window
from mlre.errors import FeatureStoreError, MlreError

Mode = Literal["incremental", "backfill"]
# Rows per write batch: Feast turns each row into protobuf objects, so this, not the source size,
# bounds the Python-side memory of a write (measured: 50k-row batches grew the 5M-row peak 1.7x).
BATCH_ROWS = 5_000
# A Redis write lock expires after this (a crashed writer cannot block the view for ever); a
# writer waits at most this long for it. SQLite's `IN (...)` list is read in chunks.
WRITE_LOCK_TTL_S = 120
WRITE_LOCK_WAIT_S = 300
SQLITE_KEYS_PER_QUERY = 900


@dataclass(frozen=True)
class ViewSpec:
    """What the engine needs to know about a feature view, free of Feast objects."""

    name: str
    source_uri: str
    join_keys: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (source column, feature name)
    timestamp_field: str
    created_field: str | None


@dataclass(frozen=True)
class Window:
    """A materialization interval; like Feast's file store, both ends are inclusive."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class PartitionResult:
    """What one partition wrote: source rows in the window, keys written, seconds, newest event."""

    feature_view: str
    partition: int
    rows: int
    keys: int
    seconds: float
    max_event_timestamp: datetime | None


def view_spec(store: FeatureStore, feature_view: FeatureView) -> ViewSpec:
    """Describe a file-backed feature view; other source types are refused with a clear error."""
    source = feature_view.batch_source
    if not isinstance(source, FileSource):
        raise FeatureStoreError(
            f"Feature view {feature_view.name!r} reads a {type(source).__name__}; the bounded "
            "engine reads parquet FileSources only. Use `feast materialize` for this view."
        )
    uri = FileSource.get_uri_for_file_path(store.config.repo_path, source.path)
    mapping = {feature: column for column, feature in (source.field_mapping or {}).items()}
    return ViewSpec(
        name=feature_view.name,
        source_uri=uri,
        join_keys=tuple(feature_view.join_keys),
        columns=tuple((mapping.get(f.name, f.name), f.name) for f in feature_view.features),
        timestamp_field=source.timestamp_field,
        created_field=source.created_timestamp_column or None,
    )


def plan_window(
    mode: Mode,
    *,
    start: datetime | None,
    end: datetime | None,
    last_end: datetime | None,
    source_start: datetime | None,
    now: datetime,
) -> Window | None:
    """The interval to materialize, or None when an incremental run has nothing new to do."""
    # Naive or inverted (start after end) in either mode: a WindowError naming the parameter.
    check_window(start, end)
    if mode == "backfill":
        if start is None or end is None:
            raise WindowError(
                "Backfill needs both start and end; pass them or use mode=incremental."
            )
        return Window(start, end)
    if mode != "incremental":
        raise MlreError(f"Unknown materialization mode {mode!r}; use 'incremental' or 'backfill'.")
    window_start = last_end or start or source_start
    window_end = end or now
    if window_start is None or window_start >= window_end:
        return None
    return Window(window_start, window_end)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def latest_rows_sql(spec: ViewSpec, partition: int, partitions: int) -> str:
    """SQL for the newest row per key in one hash partition, ties broken by `created`.

    One hash aggregate (`arg_max` over (event time, created)) rather than window functions: it
    needs no sort, and measured at 5M rows it reads 1.4x faster in 25% less memory.
    """
    if not 0 <= partition < partitions:
        raise MlreError(f"Partition {partition} is outside 0..{partitions - 1}.")
    q = quote_identifier
    keys = ", ".join(q(k) for k in spec.join_keys)
    fields = [f"{q(feat)} := {q(col)}" for col, feat in spec.columns]
    fields.append(f"{q(spec.timestamp_field)} := {q(spec.timestamp_field)}")
    order = q(spec.timestamp_field)
    if spec.created_field:
        fields.append(f"{q(spec.created_field)} := {q(spec.created_field)}")
        # A missing `created` loses every tie, like Feast's `created DESC NULLS LAST`.
        order = (
            f"struct_pack(t := {q(spec.timestamp_field)}, "
            f"c := coalesce({q(spec.created_field)}, '-infinity'::TIMESTAMPTZ))"
        )
    where = f"{q(spec.timestamp_field)} BETWEEN $start AND $end"
    if partitions > 1:
        where += f" AND hash({keys}) % {partitions} = {partition}"
    latest = (
        f"SELECT {keys}, arg_max(struct_pack({', '.join(fields)}), {order}) AS __latest, "
        f"count(*) AS __rows FROM source WHERE {where} GROUP BY {keys}"
    )
    out = [q(k) for k in spec.join_keys]
    out += [f"__latest.{q(feat)} AS {q(feat)}" for _, feat in spec.columns]
    out.append(f"__latest.{q(spec.timestamp_field)} AS {q(spec.timestamp_field)}")
    if spec.created_field:
        out.append(f"__latest.{q(spec.created_field)} AS {q(spec.created_field)}")
    return f"SELECT {', '.join(out)}, __rows FROM ({latest})"


def open_source(uri: str) -> ParquetListing:
    """The visible parquet files of a source folder (local or s3://), or a FeatureStoreError."""
    return require_parquet(uri, FeatureStoreError)


def register_source(connection: duckdb.DuckDBPyConnection, uri: str) -> None:
    """Expose a source as view `source`: DuckDB's own parquet reader for local files (parallel,
    with projection pushdown: 2.3x faster and half the memory of an Arrow dataset at 5M rows),
    the Arrow dataset for remote URIs (pyarrow reaches S3 without DuckDB extensions)."""
    listing = open_source(uri)
    if is_remote(uri):
        connection.register("source", listing.dataset())
    else:
        connection.read_parquet(list(listing.files)).create_view("source")


def connect_duckdb(
    memory_limit_mb: int, threads: int, temp_dir: Path | None
) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | int] = {"memory_limit": f"{memory_limit_mb}MB", "threads": threads}
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(temp_dir)
    connection = duckdb.connect(config=config)
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def source_time_range(spec: ViewSpec) -> tuple[datetime | None, datetime | None]:
    """Oldest and newest event timestamps in the source (read from parquet statistics)."""
    connection = connect_duckdb(256, 1, None)
    try:
        register_source(connection, spec.source_uri)
        ts = quote_identifier(spec.timestamp_field)
        low, high = connection.execute(f"SELECT min({ts}), max({ts}) FROM source").fetchone()
    finally:
        connection.close()
    return low, high


def iter_latest_batches(
    spec: ViewSpec,
    window: Window,
    partition: int,
    partitions: int,
    *,
    memory_limit_mb: int = 512,
    threads: int = 2,
    batch_rows: int = BATCH_ROWS,
    temp_dir: Path | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream the latest row per key of one partition, `batch_rows` at a time."""
    connection = connect_duckdb(memory_limit_mb, threads, temp_dir)
    try:
        register_source(connection, spec.source_uri)
        sql = latest_rows_sql(spec, partition, partitions)
        relation = connection.sql(sql, params={"start": window.start, "end": window.end})
        yield from relation.to_arrow_reader(batch_rows)
    finally:
        connection.close()


def online_write_lock(
    store: FeatureStore, feature_view: FeatureView
) -> AbstractContextManager[Any]:
    """One writer at a time, across processes, between reading the stored event times and writing.

    SQLite: a file lock per database (it also locks up under two writers). Redis: a Redis lock
    per view; Feast compares event times itself, but another process could write between its
    read and its write. Either way the newest row per key wins, whatever order writes land in.
    """
    online = store.config.online_store
    if getattr(online, "type", "sqlite") == "sqlite":
        return FileLock(str(_sqlite_path(store)) + ".write.lock")
    client = store._get_provider().online_store._get_client(online)
    name = f"mlre:materialize:{store.project}:{feature_view.name}"
    return client.lock(name, timeout=WRITE_LOCK_TTL_S, blocking_timeout=WRITE_LOCK_WAIT_S)


def _sqlite_path(store: FeatureStore) -> Path:
    return Path(store.config.repo_path or ".") / store.config.online_store.path


def _stored_event_times(
    store: FeatureStore, feature_view: FeatureView, keys: list[bytes]
) -> dict[bytes, int]:
    """Event time of each key the SQLite online store holds, as Feast stores it (epoch s)."""
    versioning = store.config.registry.enable_online_feature_view_versioning
    table = quote_identifier(_table_id(store.project, feature_view, versioning))
    found: dict[bytes, int] = {}
    with closing(sqlite3.connect(_sqlite_path(store))) as connection:
        for start in range(0, len(keys), SQLITE_KEYS_PER_QUERY):
            chunk = keys[start : start + SQLITE_KEYS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            rows = connection.execute(
                f"SELECT entity_key, max(event_ts) FROM {table} "
                f"WHERE entity_key IN ({marks}) GROUP BY entity_key",
                chunk,
            )
            found.update((key, int(ts)) for key, ts in rows if ts is not None)
    return found


def keep_newer(store: FeatureStore, feature_view: FeatureView, rows: list[Any]) -> list[Any]:
    """Drop rows older than what the online store holds for their key (call under the lock).

    Feast's SQLite store overwrites blindly, so an older window landing after a newer one (a
    backfill, or two runs racing) would turn values back in time; its Redis store checks itself.
    """
    if getattr(store.config.online_store, "type", "sqlite") != "sqlite" or not rows:
        return rows
    version = store.config.entity_key_serialization_version
    keys = [serialize_entity_key(row[0], version) for row in rows]
    stored = _stored_event_times(store, feature_view, keys)
    return [
        row
        for key, row in zip(keys, rows, strict=True)
        if key not in stored or adapt_datetime_epoch(to_naive_utc(row[2])) >= stored[key]
    ]


def _map_as_json(array: pa.Array) -> pa.Array:
    """An Arrow map column as JSON-object text, the form Feast's Map conversion reads."""
    return pa.array(
        [
            None if pairs is None else json.dumps(dict(pairs), default=str)
            for pairs in array.to_pylist()
        ],
        pa.large_string(),
    )


def feast_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with Arrow map columns turned into JSON text: Feast 0.67 converts a Map value
    from a dict or JSON text but fails on the (key, value) pairs an Arrow map column gives."""
    maps = [i for i, f in enumerate(batch.schema) if pa.types.is_map(f.type)]
    if not maps:
        return batch
    arrays = list(batch.columns)
    for i in maps:
        arrays[i] = _map_as_json(arrays[i])
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def write_batch(store: FeatureStore, feature_view: FeatureView, batch: pa.RecordBatch) -> int:
    """Write one batch through Feast's online-write path (the one its local engine uses); keys
    whose stored row is newer are left alone. Returns the keys written."""
    join_keys = {e.name: e.dtype.to_value_type() for e in feature_view.entity_columns}
    rows = _convert_arrow_to_proto(feast_ready(batch), feature_view, join_keys)
    with online_write_lock(store, feature_view):
        rows = keep_newer(store, feature_view, rows)
        store._get_provider().online_write_batch(store.config, feature_view, rows, progress=None)
    return len(rows)


def materialize_partition(
    store: FeatureStore,
    feature_view: FeatureView,
    window: Window,
    partition: int,
    partitions: int,
    *,
    memory_limit_mb: int = 512,
    batch_rows: int = BATCH_ROWS,
    temp_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    source_uri: str | None = None,
) -> PartitionResult:
    """Write the latest rows of one partition; re-running it writes the same values.
    `source_uri`: read a staged copy of the source (`stage_source`) instead of the view's own."""
    began = time.perf_counter()
    spec = view_spec(store, feature_view)
    if source_uri is not None:
        spec = replace(spec, source_uri=source_uri)
    rows = keys = 0
    newest: datetime | None = None
    for scanned in iter_latest_batches(
        spec,
        window,
        partition,
        partitions,
        memory_limit_mb=memory_limit_mb,
        batch_rows=batch_rows,
        temp_dir=temp_dir,
    ):
        rows += pc.sum(scanned.column("__rows")).as_py() or 0
        batch = scanned.drop_columns(["__rows"])
        keys += write_batch(store, feature_view, batch)
        batch_max = pc.max(batch.column(spec.timestamp_field)).as_py()
        newest = batch_max if newest is None or (batch_max and batch_max > newest) else newest
        if progress is not None:
            progress(batch.num_rows)
    return PartitionResult(
        feature_view=feature_view.name,
        partition=partition,
        rows=rows,
        keys=keys,
        seconds=round(time.perf_counter() - began, 3),
        max_event_timestamp=newest,
    )


def stage_source(spec: ViewSpec, window: Window, folder: Path) -> str | None:
    """Copy a REMOTE source's rows in the window, only the columns the view reads, to a local
    parquet file under `folder` once; returns its path (None for a local source: nothing to do).

    Every partition rescans its source: cheap locally (DuckDB's reader, projection pushdown), but
    on S3 each scan downloads the columns again (measured at 1M rows: 4 partitions read 7-11 s
    from S3, one staged copy ~2 s). The copy streams record batches, so memory stays bounded.
    """
    if not is_remote(spec.source_uri):
        return None
    columns = [*spec.join_keys, *(column for column, _ in spec.columns), spec.timestamp_field]
    if spec.created_field:
        columns.append(spec.created_field)
    ts = pc.field(spec.timestamp_field)
    inside = (ts >= pa.scalar(window.start)) & (ts <= pa.scalar(window.end))
    scanner = (
        open_source(spec.source_uri)
        .dataset()
        .scanner(columns=list(dict.fromkeys(columns)), filter=inside, batch_size=BATCH_ROWS * 20)
    )
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{spec.name}.parquet"
    with pq.ParquetWriter(target, scanner.projected_schema) as writer:
        for batch in scanner.to_batches():
            writer.write_batch(batch)
    return str(target)


def materialize_view(
    store: FeatureStore,
    feature_view: FeatureView,
    window: Window,
    *,
    partitions: int = 4,
    memory_limit_mb: int = 512,
    batch_rows: int = BATCH_ROWS,
    temp_dir: Path | None = None,
) -> list[PartitionResult]:
    """Every partition in turn (a remote source staged locally once), then the interval recorded
    (for scripts and benchmarks; the flow runs the same steps as separate tasks)."""
    with tempfile.TemporaryDirectory(prefix="mlre-stage-", dir=temp_dir) as staging:
        staged = stage_source(view_spec(store, feature_view), window, Path(staging))
        results = [
            materialize_partition(
                store,
                feature_view,
                window,
                partition,
                partitions,
                memory_limit_mb=memory_limit_mb,
                batch_rows=batch_rows,
                temp_dir=temp_dir,
                source_uri=staged,
            )
            for partition in range(partitions)
        ]
    record_interval(store, feature_view, window)
    return results


def record_interval(store: FeatureStore, feature_view: FeatureView, window: Window) -> None:
    """Record the interval in the registry so incremental runs and Feast's UI know about it."""
    store.registry.apply_materialization(feature_view, store.project, window.start, window.end)


def utcnow() -> datetime:
    """Now, timezone-aware (a function so tests can pass a fixed `now` instead)."""
    return datetime.now(UTC)

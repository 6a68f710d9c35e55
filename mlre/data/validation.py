"""Validate source data before anything (Feast, training, drift checks) reads it.

Every check raises `SourceDataError` with a message naming the source and file, the column, what is
wrong, up to three example rows (key and timestamp values) and what to do about it. Parquet files
are read one at a time, in record batches and only the columns a check needs, so folders with
millions of rows validate in bounded memory, locally or on S3 (pyarrow's filesystems, see
`mlre.data.files`); duplicates across files are found with DuckDB over the Arrow stream, which
spills to disk instead of holding every key in memory.

Column kinds: `int`, `float`, `string`, `bool`, `timestamp`, `bytes`, `json` (a JSON text, or a
nested column), `map` (a JSON-object text, a struct or an Arrow map), `struct`, `any` (present,
type not checked) and `list<KIND>` for arrays of a kind.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlre.data import generator as gen
from mlre.data.files import ParquetListing, list_parquet
from mlre.errors import SourceDataError

Kind = Literal["int", "float", "string", "bool", "timestamp"]
KINDS: tuple[str, ...] = (
    *("int", "float", "string", "bool", "timestamp"),
    *("bytes", "json", "map", "struct", "any"),
)

DEFAULT_FUTURE_TOLERANCE = timedelta(minutes=5)
_BATCH_ROWS = 262_144
_MAX_EXAMPLES = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SourceSchema:
    """What a source must look like: keys, event/created timestamps, column kinds, value bounds."""

    name: str
    key_columns: tuple[str, ...]
    timestamp_column: str
    created_column: str | None
    # column -> kind; keys may be left out (then their dtype is not checked), timestamps are
    # implicitly "timestamp"
    columns: Mapping[str, str]
    allow_extra_columns: bool = True
    # column -> (low, high): values outside are "extreme" and rejected; NaN/null are not checked
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # column -> the only values a string column may hold (null is a missing value, allowed)
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # columns that must hold a value in every row (NaN counts as missing)
    not_null: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key_columns:
            raise ValueError(f"SourceSchema {self.name!r}: key_columns must not be empty.")
        object.__setattr__(self, "key_columns", tuple(self.key_columns))
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        object.__setattr__(self, "bounds", MappingProxyType(dict(self.bounds)))
        categories = {c: tuple(v) for c, v in self.categories.items()}
        object.__setattr__(self, "categories", MappingProxyType(categories))
        object.__setattr__(self, "not_null", tuple(self.not_null))
        for column, kind in self.columns.items():
            if not is_kind(kind):
                raise ValueError(
                    f"SourceSchema {self.name!r}: column {column!r} has kind {kind!r}; "
                    f"use one of {', '.join(KINDS)} or list<KIND>."
                )
        for column in self.categories:
            if self.kind_of(column) != "string":
                raise ValueError(
                    f"SourceSchema {self.name!r}: categories given for {column!r}, which is not "
                    "a string column of the schema."
                )
        for column in self.not_null:
            if column not in self.required_columns:
                raise ValueError(
                    f"SourceSchema {self.name!r}: not_null names {column!r}, which is not a "
                    "column of the schema."
                )
        for column in self.timestamp_columns:
            if self.columns.get(column, "timestamp") != "timestamp":
                raise ValueError(
                    f"SourceSchema {self.name!r}: timestamp column {column!r} must have kind "
                    f"'timestamp', not {self.columns[column]!r}."
                )
        for column, (low, high) in self.bounds.items():
            if self.kind_of(column) not in ("int", "float"):
                raise ValueError(
                    f"SourceSchema {self.name!r}: bounds given for {column!r}, which is not a "
                    "numeric column of the schema."
                )
            if not low <= high:
                raise ValueError(f"SourceSchema {self.name!r}: bounds of {column!r} are empty.")

    @property
    def timestamp_columns(self) -> tuple[str, ...]:
        """Event timestamp, then the created timestamp if any."""
        created = (self.created_column,) if self.created_column else ()
        return (self.timestamp_column, *created)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Every column a file must have, keys and timestamps first, without repeats."""
        ordered = [*self.key_columns, *self.timestamp_columns, *self.columns]
        return tuple(dict.fromkeys(ordered))

    def kind_of(self, column: str) -> str | None:
        """The expected kind of a column (None for a key whose dtype is not constrained)."""
        if column in self.timestamp_columns:
            return "timestamp"
        return self.columns.get(column)


@dataclass(frozen=True)
class ValidationReport:
    """What a successful validation looked at."""

    source: str
    files: tuple[str, ...]
    rows: int
    min_timestamp: datetime | None
    max_timestamp: datetime | None


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def _error(
    where: str, column: str | None, problem: str, fix: str, examples: str = ""
) -> SourceDataError:
    """The one error type users see, in one shape: where, column, what, examples, fix."""
    col = f", column {column!r}" if column else ""
    sample = f" Examples: {examples}." if examples else ""
    return SourceDataError(f"{where}{col}: {problem}.{sample} {fix}")


def _format_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def _examples(batch: pa.RecordBatch | pa.Table, mask: pa.Array, schema: SourceSchema) -> str:
    """Up to three offending rows, shown by key and timestamp values."""
    shown = [c for c in (*schema.key_columns, schema.timestamp_column) if c in batch.schema.names]
    rows = batch.select(shown).filter(pc.fill_null(mask, False)).slice(0, _MAX_EXAMPLES).to_pylist()
    return "; ".join(
        "(" + ", ".join(f"{k}={_format_value(v)}" for k, v in row.items()) + ")" for row in rows
    )


# --------------------------------------------------------------------------------------------
# Schema-level checks (no data read)
# --------------------------------------------------------------------------------------------


def list_item(kind: str) -> str | None:
    """The item kind of `list<KIND>`, else None."""
    if kind.startswith("list<") and kind.endswith(">"):
        return kind[len("list<") : -1]
    return None


def is_kind(kind: str) -> bool:
    """A kind this module can check: a base kind or `list<KIND>` of one."""
    item = list_item(kind)
    return is_kind(item) if item is not None else kind in KINDS


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _is_list(dtype: pa.DataType) -> bool:
    return (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
    )


def _is_nested(dtype: pa.DataType) -> bool:
    return pa.types.is_struct(dtype) or pa.types.is_map(dtype) or _is_list(dtype)


_KIND_CHECKS = {
    "int": pa.types.is_integer,
    "float": pa.types.is_floating,
    "string": _is_text,
    "bool": pa.types.is_boolean,
    "timestamp": pa.types.is_timestamp,
    "bytes": lambda t: (
        pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
    ),
    # Feast stores Json as text; it also serialises a nested value it is given.
    "json": lambda t: _is_text(t) or _is_nested(t),
    # Feast reads a Map from JSON-object text or a struct; an Arrow map is converted for it.
    "map": lambda t: _is_text(t) or pa.types.is_struct(t) or pa.types.is_map(t),
    "struct": pa.types.is_struct,
    "any": lambda t: True,
}


def _kind_matches(kind: str, dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        return _kind_matches(kind, dtype.value_type)
    item = list_item(kind)
    if item is not None:
        return _is_list(dtype) and _kind_matches(item, dtype.value_type)
    return _KIND_CHECKS[kind](dtype)


def _check_arrow_schema(arrow_schema: pa.Schema, schema: SourceSchema, where: str) -> None:
    """Required columns present, each of the expected kind, timestamps timezone-aware."""
    names = set(arrow_schema.names)
    missing = [c for c in schema.required_columns if c not in names]
    if missing:
        raise _error(
            where,
            missing[0],
            f"missing required columns {missing} (has {sorted(names)})",
            "Add the columns to the source, or fix the schema / feature view that expects them.",
        )
    if not schema.allow_extra_columns:
        extra = sorted(names - set(schema.required_columns))
        if extra:
            raise _error(
                where,
                extra[0],
                f"unexpected columns {extra}",
                "Drop them from the source or declare them in the schema.",
            )
    for column in schema.required_columns:
        kind = schema.kind_of(column)
        dtype = arrow_schema.field(column).type
        if kind is not None and not _kind_matches(kind, dtype):
            raise _error(
                where,
                column,
                f"wrong dtype: expected {kind}, found {dtype}",
                f"Write the column as {kind} (cast it before writing the source).",
            )
    for column in schema.timestamp_columns:
        dtype = arrow_schema.field(column).type
        if dtype.tz is None:
            raise _error(
                where,
                column,
                f"timestamps are timezone-naive ({dtype})",
                "Localize them to UTC before writing (e.g. `.dt.tz_localize('UTC')`); "
                "naive times are ambiguous for point-in-time joins.",
            )


# --------------------------------------------------------------------------------------------
# Value checks, one record batch at a time
# --------------------------------------------------------------------------------------------


def _epoch_us(array: pa.Array) -> pa.Array:
    """Timestamps of any unit as int64 microseconds since the epoch (tz does not change values)."""
    as_us = pc.cast(array, pa.timestamp("us", tz=array.type.tz), safe=False)
    return as_us.cast(pa.int64())


def _to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _check_nulls(batch: pa.RecordBatch, schema: SourceSchema, where: str) -> None:
    for column in schema.key_columns:
        bad = pc.is_null(batch.column(column), nan_is_null=True)
        if pc.any(bad).as_py():
            raise _error(
                where,
                column,
                f"at least {pc.sum(bad).as_py()} rows have a null/NaN key",
                "Every row needs its entity key; drop or repair those rows upstream.",
                _examples(batch, bad, schema),
            )
    for column in schema.timestamp_columns:
        bad = pc.is_null(batch.column(column))
        if pc.any(bad).as_py():
            raise _error(
                where,
                column,
                f"at least {pc.sum(bad).as_py()} rows have a null timestamp",
                "Point-in-time joins need a timestamp on every row; fill or drop those rows.",
                _examples(batch, bad, schema),
            )


def _check_future(
    batch: pa.RecordBatch, schema: SourceSchema, where: str, limit_us: int, now: datetime
) -> None:
    column = schema.timestamp_column
    bad = pc.greater(_epoch_us(batch.column(column)), pa.scalar(limit_us, pa.int64()))
    if pc.any(bad).as_py():
        raise _error(
            where,
            column,
            f"at least {pc.sum(bad).as_py()} rows have timestamps in the future "
            f"(now is {now.isoformat()})",
            "Check the clock / timezone of the producer; future rows would leak into training.",
            _examples(batch, bad, schema),
        )


def _check_numbers(batch: pa.RecordBatch, schema: SourceSchema, where: str) -> None:
    """No inf anywhere (NaN in features is a missing value and allowed); values inside bounds."""
    for column in schema.required_columns:
        array = batch.column(column)
        if pa.types.is_floating(array.type):
            bad = pc.fill_null(pc.is_inf(array), False)
            if pc.any(bad).as_py():
                raise _error(
                    where,
                    column,
                    f"at least {pc.sum(bad).as_py()} rows hold non-finite values (inf)",
                    "Fix the division or overflow that produced them; use NaN for a missing value.",
                    _examples(batch, bad, schema),
                )
    for column, (low, high) in schema.bounds.items():
        array = batch.column(column)
        outside = pc.or_(pc.less(array, low), pc.greater(array, high))
        bad = pc.fill_null(outside, False)
        if pc.any(bad).as_py():
            raise _error(
                where,
                column,
                f"at least {pc.sum(bad).as_py()} rows hold extreme values outside [{low}, {high}]",
                "Check the unit / scale of the producer, or widen the bounds if they are real.",
                _examples(batch, bad, schema),
            )


def _check_contract(batch: pa.RecordBatch, schema: SourceSchema, where: str) -> None:
    """Declared non-null columns hold a value in every row; categorical ones only known values."""
    for column in schema.not_null:
        bad = pc.is_null(batch.column(column), nan_is_null=True)
        if pc.any(bad).as_py():
            raise _error(
                where,
                column,
                f"at least {pc.sum(bad).as_py()} rows have no value, but the contract says the "
                "column is never null",
                "Fill the values upstream, or declare the field nullable in the feature repo "
                "(Field tag contract:nullable).",
                _examples(batch, bad, schema),
            )
    for column, allowed in schema.categories.items():
        array = batch.column(column)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        known = pc.is_in(array, value_set=pa.array(allowed, array.type))
        bad = pc.and_(pc.is_valid(array), pc.invert(pc.fill_null(known, False)))
        if pc.any(bad).as_py():
            unknown = pc.unique(pc.filter(array, bad)).to_pylist()[:_MAX_EXAMPLES]
            raise _error(
                where,
                column,
                f"at least {pc.sum(bad).as_py()} rows hold categories outside the contract "
                f"{list(allowed)} (e.g. {unknown})",
                "Fix the producer's spelling or codes, or add the category to the field's "
                "contract:categories tag in the feature repo.",
                _examples(batch, bad, schema),
            )


def _json_ok(text: str | None, kind: str) -> bool:
    if text is None:
        return True
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return kind == "json" or isinstance(value, dict)


def _check_json_text(batch: pa.RecordBatch, schema: SourceSchema, where: str) -> None:
    """Json and Map columns stored as text hold JSON (an object, for a Map) in every row."""
    for column in schema.required_columns:
        kind = schema.kind_of(column)
        array = batch.column(column)
        if kind not in ("json", "map") or not _is_text(array.type):
            continue
        bad = pa.array([not _json_ok(v, kind) for v in array.to_pylist()], pa.bool_())
        if pc.any(bad).as_py():
            shape = "a JSON object" if kind == "map" else "JSON"
            raise _error(
                where,
                column,
                f"at least {pc.sum(bad).as_py()} rows hold text that is not {shape}",
                f"Write the column as {shape} text (json.dumps), or null for a missing value.",
                _examples(batch, bad, schema),
            )


@dataclass
class _Span:
    """Running row count and timestamp range over batches."""

    rows: int = 0
    min_us: int | None = None
    max_us: int | None = None

    def add(self, batch: pa.RecordBatch, column: str) -> None:
        self.rows += batch.num_rows
        stats = pc.min_max(_epoch_us(batch.column(column)))
        lo, hi = stats["min"].as_py(), stats["max"].as_py()
        if lo is not None:
            self.min_us = lo if self.min_us is None else min(self.min_us, lo)
            self.max_us = hi if self.max_us is None else max(self.max_us, hi)


def _check_batches(
    batches: Iterator[pa.RecordBatch], schema: SourceSchema, where: str, now: datetime
) -> _Span:
    """Run every value check on each batch; returns rows and timestamp range seen."""
    # Errors stop at the first offending batch, so counts in messages are lower bounds.
    limit_us = (now + DEFAULT_FUTURE_TOLERANCE - _EPOCH) // timedelta(microseconds=1)
    span = _Span()
    for batch in batches:
        _check_nulls(batch, schema, where)
        _check_future(batch, schema, where, limit_us, now)
        _check_numbers(batch, schema, where)
        _check_contract(batch, schema, where)
        _check_json_text(batch, schema, where)
        span.add(batch, schema.timestamp_column)
    return span


def _check_now(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now = {now!r} must be timezone-aware (e.g. datetime.now(UTC)).")


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def _frame_to_arrow(frame: pd.DataFrame, schema: SourceSchema, where: str) -> pa.Table:
    """Convert column by column so a column pandas cannot type cleanly is named in the error."""
    arrays, names = [], []
    for column in frame.columns:
        try:
            arrays.append(pa.array(frame[column], from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _error(
                where,
                str(column),
                f"values of mixed or unsupported types ({exc})",
                f"Give the column one type; the schema expects {schema.kind_of(str(column))}.",
            ) from exc
        names.append(str(column))
    return pa.Table.from_arrays(arrays, names=names)


def _duplicate_subset(schema: SourceSchema) -> list[str]:
    """Columns that must be unique together.

    A later `created` for the same (key, event time) is a correction that Feast resolves by
    `created`, so it is legitimate; only rows equal in key, event time and created are ambiguous.
    """
    subset = [*schema.key_columns, schema.timestamp_column]
    return [*subset, schema.created_column] if schema.created_column else subset


def _check_frame_duplicates(frame: pd.DataFrame, schema: SourceSchema, where: str) -> None:
    subset = _duplicate_subset(schema)
    dup = frame.duplicated(subset=subset, keep=False)
    if dup.any():
        sample = frame.loc[dup, subset].head(_MAX_EXAMPLES).to_dict("records")
        examples = "; ".join(
            "(" + ", ".join(f"{k}={_format_value(v)}" for k, v in row.items()) + ")"
            for row in sample
        )
        raise _error(
            where,
            schema.timestamp_column,
            f"{int(dup.sum())} rows share the same key and timestamp {subset}",
            "Deduplicate upstream; with duplicates the feature value a join returns is arbitrary.",
            examples,
        )


def validate_frame(
    frame: pd.DataFrame, schema: SourceSchema, *, source: str, now: datetime
) -> None:
    """Raise SourceDataError if an in-memory source frame breaks its schema or data rules."""
    _check_now(now)
    where = f"source {source!r}"
    if frame.empty:
        raise _error(
            where, None, "frame is empty (0 rows)", "Generate or load the source data first."
        )
    table = _frame_to_arrow(frame, schema, where)
    _check_arrow_schema(table.schema, schema, where)
    _check_batches(iter(table.to_batches(max_chunksize=_BATCH_ROWS)), schema, where, now)
    _check_frame_duplicates(frame, schema, where)


# --------------------------------------------------------------------------------------------
# Files and folders
# --------------------------------------------------------------------------------------------


def _parquet_files(location: Path | str, where: str) -> ParquetListing:
    """A single file, or every visible parquet file under a folder or prefix (local or S3)."""
    try:
        listing = list_parquet(location)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise _error(
            where,
            None,
            f"could not list the source ({exc})",
            "Check the location (MLRE_OFFLINE_URI) and that this process's credentials may "
            "list it (s3:ListBucket on the bucket).",
        ) from exc
    if not listing.exists:
        raise _error(where, None, f"path {location} does not exist", "Write the source first.")
    if not listing.files:
        raise _error(
            where, None, f"folder {location} holds no parquet files", "Write the source first."
        )
    return listing


def _unreadable(where: str, exc: Exception) -> SourceDataError:
    return _error(
        where,
        None,
        f"unreadable or truncated parquet file ({exc})",
        "Re-write the file (write_source writes atomically) or delete it; on S3, check that "
        "this process's credentials may read it (s3:GetObject).",
    )


def _batches(pf: pq.ParquetFile, columns: Sequence[str], where: str) -> Iterator[pa.RecordBatch]:
    """Record batches of only the needed columns; a corrupt page becomes a SourceDataError."""
    try:
        yield from pf.iter_batches(batch_size=_BATCH_ROWS, columns=list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(where, exc) from exc


def _validate_file(
    listing: ParquetListing, path: str, schema: SourceSchema, now: datetime
) -> _Span:
    where = f"source {schema.name!r}, file {listing.display(path)}"
    try:
        handle = listing.filesystem.open_input_file(path)
        pf = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(where, exc) from exc
    with handle:
        if pf.metadata.num_rows == 0:
            raise _error(
                where, None, "file is empty (0 rows)", "Delete it or re-write it with data."
            )
        _check_arrow_schema(pf.schema_arrow, schema, where)
        return _check_batches(_batches(pf, schema.required_columns, where), schema, where, now)


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _check_file_duplicates(listing: ParquetListing, schema: SourceSchema, where: str) -> None:
    """Duplicate (key, timestamp[, created]) rows within or across files, found by DuckDB over
    the Arrow stream of only those columns (local or S3 alike; DuckDB spills, never holds all)."""
    subset = _duplicate_subset(schema)
    cols = ", ".join(_quote(c) for c in subset)
    shown = ", ".join(f"CAST({_quote(c)} AS VARCHAR)" for c in subset)
    query = (
        f"SELECT {shown}, count(*) AS n, list(DISTINCT __filename) AS files "
        f"FROM source GROUP BY {cols} HAVING count(*) > 1 ORDER BY {cols} LIMIT {_MAX_EXAMPLES}"
    )
    reader = listing.dataset().scanner(columns=[*subset, "__filename"]).to_reader()
    with tempfile.TemporaryDirectory(prefix="mlre-validate-") as spill:
        config = {"threads": 2, "memory_limit": "1GB", "temp_directory": spill}
        with duckdb.connect(config=config) as con:
            con.execute("SET TimeZone = 'UTC'")
            con.register("source", reader)
            rows = con.execute(query).fetchall()
    if rows:
        examples = "; ".join(
            "(" + ", ".join(f"{c}={v}" for c, v in zip(subset, row, strict=False)) + ")"
            for row in rows
        )
        in_files = sorted({listing.display(f) for row in rows for f in row[-1]})
        raise _error(
            f"{where}, file(s) {', '.join(in_files)}",
            schema.timestamp_column,
            f"rows share the same key and timestamp {subset}",
            "Deduplicate upstream or remove the file written twice; with duplicates the "
            "feature value a join returns is arbitrary.",
            examples,
        )


def validate_source_path(
    path: Path | str, schema: SourceSchema, *, now: datetime
) -> ValidationReport:
    """Validate one parquet file or every parquet file under a folder or an S3 prefix."""
    _check_now(now)
    where = f"source {schema.name!r}"
    listing = _parquet_files(path, f"{where}, path {path}")
    total = _Span()
    for file in listing.files:
        span = _validate_file(listing, file, schema, now)
        total.rows += span.rows
        for us in (span.min_us, span.max_us):
            if us is not None:
                total.min_us = us if total.min_us is None else min(total.min_us, us)
                total.max_us = us if total.max_us is None else max(total.max_us, us)
    _check_file_duplicates(listing, schema, where)
    return ValidationReport(
        source=schema.name,
        files=tuple(listing.display(f) for f in listing.files),
        rows=total.rows,
        min_timestamp=None if total.min_us is None else _to_datetime(total.min_us),
        max_timestamp=None if total.max_us is None else _to_datetime(total.max_us),
    )


# --------------------------------------------------------------------------------------------
# Demo schemas
# --------------------------------------------------------------------------------------------

_KIND_OF_FEATURE: Mapping[str, Kind] = MappingProxyType(
    {"int": "int", "share": "float", "amount": "float", "string": "string"}
)
# Generous sanity bounds: they catch unit mistakes (cents vs. units, share in %), not drift.
_BOUNDS_OF_FEATURE: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"int": (0.0, 1e9), "share": (0.0, 1.0), "amount": (0.0, 1e12)}
)


def _feature_schema(
    name: str, features: Mapping[str, str], keys: tuple[str, ...], created: str | None
) -> SourceSchema:
    columns: dict[str, str] = {k: "int" for k in keys}
    columns[gen.TIMESTAMP_COLUMN] = "timestamp"
    if created:
        columns[created] = "timestamp"
    columns.update({f: _KIND_OF_FEATURE[k] for f, k in features.items()})
    bounds = {f: _BOUNDS_OF_FEATURE[k] for f, k in features.items() if k in _BOUNDS_OF_FEATURE}
    return SourceSchema(
        name=name,
        key_columns=keys,
        timestamp_column=gen.TIMESTAMP_COLUMN,
        created_column=created,
        columns=columns,
        bounds=bounds,
    )


def schemas_for_demo() -> dict[str, SourceSchema]:
    """Schemas of the three generated demo sources, keyed by source name."""
    transactions = SourceSchema(
        name=gen.TRANSACTIONS_SOURCE,
        key_columns=("transaction_id", gen.ENTITY_COLUMN),
        timestamp_column=gen.TIMESTAMP_COLUMN,
        created_column=None,
        columns={
            "transaction_id": "int",
            gen.ENTITY_COLUMN: "int",
            gen.TIMESTAMP_COLUMN: "timestamp",
            "amount": "float",
            "merchant_category": "string",
            gen.LABEL_COLUMN: "int",
        },
        bounds={"amount": (0.0, 1e12), gen.LABEL_COLUMN: (0.0, 1.0)},
    )
    return {
        gen.DAILY_SOURCE: _feature_schema(
            gen.DAILY_SOURCE, gen.DAILY_FEATURES, (gen.ENTITY_COLUMN,), gen.CREATED_COLUMN
        ),
        gen.HOURLY_SOURCE: _feature_schema(
            gen.HOURLY_SOURCE, gen.HOURLY_FEATURES, (gen.ENTITY_COLUMN,), gen.CREATED_COLUMN
        ),
        gen.TRANSACTIONS_SOURCE: transactions,
    }

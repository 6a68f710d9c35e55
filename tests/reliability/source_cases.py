"""Bad source parquet files, shared by the validate_source_path and materialize-features cases.

Each case writes one bad file into its own folder `bad-<id>/` inside the daily-stats source, made
from real rows of the newest day with one thing wrong. The bad rows carry a `created` one second
later than the originals, so if a bad file ever got through, its values would win in the online
store and the state check would catch it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SOURCE = "customer_daily_stats"
VIEW = "customer_daily_stats_fv"
TS = "event_timestamp"
CREATED = "created"
KEY = "customer_id"


@dataclass(frozen=True)
class SourceCase:
    """One bad file: what it breaks, the column the error must name, the fix it must give."""

    id: str
    build: Callable[[pa.Table], pa.Table | bytes]
    column: str | None
    fix: str
    # False where the flow accepts the input by design (Feast ignores extra columns).
    through_flow: bool = True
    # Validate with allow_extra_columns=False (a strict contract).
    strict: bool = False


def _set(table: pa.Table, column: str, values: pa.Array | list[object]) -> pa.Table:
    array = values if isinstance(values, pa.Array) else pa.array(values)
    return table.set_column(table.schema.get_field_index(column), column, array)


def _fill(table: pa.Table, column: str, value: object, kind: pa.DataType) -> pa.Table:
    return _set(table, column, pa.array([value] * table.num_rows, kind))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _shift(table: pa.Table, column: str, delta: timedelta) -> pa.Table:
    return _set(table, column, pc.add(table[column], pa.scalar(delta)))


def _as_string(table: pa.Table, column: str) -> pa.Table:
    return _set(table, column, pc.cast(table[column], pa.string()))


def _with_first_null(table: pa.Table, column: str) -> pa.Table:
    values = table[column].to_pylist()
    return _set(table, column, pa.array([None, *values[1:]], table.schema.field(column).type))


CASES: tuple[SourceCase, ...] = (
    SourceCase(
        "missing_column", lambda t: t.drop_columns(["avg_amount_30d"]),
        "avg_amount_30d", "Add the columns",
    ),
    SourceCase(
        "extra_column",
        lambda t: t.append_column("debug_note", pa.array(["x"] * t.num_rows)),
        "debug_note", "Drop them", through_flow=False, strict=True,
    ),
    SourceCase(
        "wrong_dtype_feature", lambda t: _as_string(t, "txn_count_1d"),
        "txn_count_1d", "Write the column as int",
    ),
    SourceCase(
        "wrong_dtype_key", lambda t: _as_string(t, KEY),
        KEY, "Write the column as int",
    ),
    SourceCase("null_key", lambda t: _with_first_null(t, KEY), KEY, "drop or repair those rows"),
    SourceCase("null_timestamp", lambda t: _with_first_null(t, TS), TS, "fill or drop those rows"),
    SourceCase("duplicate_rows", lambda t: _shift(t, CREATED, -timedelta(seconds=1)), TS,
               "Deduplicate upstream"),
    SourceCase(
        "future_timestamp", lambda t: _shift(_shift(t, TS, timedelta(days=30)), CREATED,
                                             timedelta(days=30)),
        TS, "Check the clock",
    ),
    SourceCase(
        "naive_timestamp", lambda t: _set(t, TS, pc.cast(t[TS], pa.timestamp("us"))),
        TS, "Localize them to UTC",
    ),
    SourceCase("empty_file", lambda t: t.slice(0, 0), None, "Delete it or re-write it"),
    SourceCase(
        "truncated_file", lambda t: _parquet_bytes(t)[: len(_parquet_bytes(t)) // 2],
        None, "Re-write the file",
    ),
    SourceCase("not_parquet", lambda t: b"PAR1 not a parquet file", None, "Re-write the file"),
    SourceCase(
        "infinite_value", lambda t: _fill(t, "avg_amount_30d", float("inf"), pa.float64()),
        "avg_amount_30d", "use NaN for a missing value",
    ),
    SourceCase(
        "share_in_percent", lambda t: _fill(t, "night_txn_share_1d", 7.0, pa.float64()),
        "night_txn_share_1d", "Check the unit",
    ),
    SourceCase(
        "negative_amount", lambda t: _fill(t, "txn_amount_sum_1d", -120.0, pa.float64()),
        "txn_amount_sum_1d", "Check the unit",
    ),
    SourceCase(
        "amount_overflow", lambda t: _fill(t, "avg_amount_30d", 1e15, pa.float64()),
        "avg_amount_30d", "Check the unit",
    ),
)  # fmt: skip


def newest_rows(folder: Path, rows: int = 5) -> pa.Table:
    """Real rows of the newest day file, one second 'later' (a correction that would win)."""
    newest = sorted(folder.glob("part-*.parquet"))[-1]
    table = pq.read_table(newest).slice(0, rows)
    return _shift(table, CREATED, timedelta(seconds=1))


def write_case(case: SourceCase, source_dir: Path) -> Path:
    """Write the case's bad file under `source_dir/bad-<id>/`; the file's path."""
    built = case.build(newest_rows(source_dir))
    target = source_dir / f"bad-{case.id}" / "part.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(built, bytes):
        target.write_bytes(built)
    else:
        pq.write_table(built, target)
    return target

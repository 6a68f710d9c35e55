"""Source validation rejects each kind of bad data with a message that says where and what to do."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlre.data.generator import (
    DAILY_SOURCE,
    HOURLY_SOURCE,
    TRANSACTIONS_SOURCE,
    GeneratorConfig,
    Scenario,
    generate_sources,
    write_source,
    write_sources,
)
from mlre.data.validation import (
    SourceSchema,
    schemas_for_demo,
    validate_frame,
    validate_source_path,
)
from mlre.errors import SourceDataError

pytestmark = pytest.mark.unit

CFG = GeneratorConfig(n_customers=40, days=4, seed=1)
NOW = datetime(2026, 3, 1, tzinfo=UTC)
SCHEMAS = schemas_for_demo()
DAILY_SCHEMA = SCHEMAS[DAILY_SOURCE]


@pytest.fixture(scope="module")
def sources() -> dict[str, pd.DataFrame]:
    return generate_sources(CFG)


@pytest.fixture
def daily(sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return sources[DAILY_SOURCE].copy()


def _null_key(df: pd.DataFrame) -> pd.DataFrame:
    df["customer_id"] = df["customer_id"].astype("Int64")
    df.loc[[3, 7], "customer_id"] = pd.NA
    return df


def _set(column: str, rows: list[int], value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[rows, column] = value
        return df

    return mutate


# (id, mutation, column named in the message, words in the message)
_BAD_DATA: list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame], str, str]] = [
    ("missing-column", lambda df: df.drop(columns=["txn_count_1d"]), "txn_count_1d", "missing"),
    (
        "int-as-float",
        lambda df: df.assign(txn_count_1d=df["txn_count_1d"].astype(float)),
        "txn_count_1d",
        "expected int",
    ),
    (
        "string-as-int",
        lambda df: df.assign(preferred_channel=1),
        "preferred_channel",
        "expected string",
    ),
    ("null-key", _null_key, "customer_id", "null"),
    ("null-timestamp", _set("event_timestamp", [5], pd.NaT), "event_timestamp", "null timestamp"),
    ("null-created", _set("created", [5], pd.NaT), "created", "null timestamp"),
    (
        "tz-naive",
        lambda df: df.assign(event_timestamp=df["event_timestamp"].dt.tz_localize(None)),
        "event_timestamp",
        "timezone-naive",
    ),
    (
        "future",
        _set("event_timestamp", [2], pd.Timestamp(NOW + timedelta(days=2))),
        "event_timestamp",
        "future",
    ),
    (
        "duplicate",
        lambda df: pd.concat([df, df.iloc[[0, 1]]], ignore_index=True),
        "event_timestamp",
        "same key and timestamp",
    ),
    ("inf", _set("txn_amount_sum_1d", [4], np.inf), "txn_amount_sum_1d", "non-finite"),
    ("extreme", _set("night_txn_share_1d", [4], 1.5), "night_txn_share_1d", "extreme"),
]
BAD_DATA = {case[0]: case[1:] for case in _BAD_DATA}


@pytest.mark.parametrize(("mutate", "column", "words"), BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_frame_raises_naming_source_and_column(
    daily: pd.DataFrame,
    mutate: Callable[[pd.DataFrame], pd.DataFrame],
    column: str,
    words: str,
) -> None:
    with pytest.raises(SourceDataError) as info:
        validate_frame(mutate(daily), DAILY_SCHEMA, source="daily-under-test", now=NOW)
    message = str(info.value)
    assert "'daily-under-test'" in message
    assert f"column {column!r}" in message
    assert words in message


@pytest.mark.parametrize(("mutate", "column", "words"), BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_file_raises_naming_file_and_column(
    tmp_path: Path,
    daily: pd.DataFrame,
    mutate: Callable[[pd.DataFrame], pd.DataFrame],
    column: str,
    words: str,
) -> None:
    bad = mutate(daily)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), path)
    with pytest.raises(SourceDataError) as info:
        validate_source_path(path, DAILY_SCHEMA, now=NOW)
    message = str(info.value)
    assert str(path) in message
    assert f"column {column!r}" in message
    assert words in message


@pytest.mark.parametrize(
    "case", ["null-key", "future", "inf", "extreme", "duplicate", "null-timestamp"]
)
def test_row_level_errors_show_example_rows_and_a_fix(daily: pd.DataFrame, case: str) -> None:
    mutate = BAD_DATA[case][0]
    with pytest.raises(SourceDataError) as info:
        validate_frame(mutate(daily), DAILY_SCHEMA, source="daily", now=NOW)
    message = str(info.value)
    examples = message.split("Examples:")[1]
    assert 1 <= examples.count("customer_id=") <= 3
    assert "event_timestamp=" in examples
    assert message.rstrip().endswith(".")  # ends with the instruction sentence


@pytest.mark.parametrize("source", [DAILY_SOURCE, HOURLY_SOURCE, TRANSACTIONS_SOURCE])
def test_generated_data_passes_as_frame_and_as_files(
    tmp_path: Path, sources: dict[str, pd.DataFrame], source: str
) -> None:
    frame = sources[source]
    validate_frame(frame, SCHEMAS[source], source=source, now=NOW)
    folder = write_sources({source: frame}, tmp_path)[source]
    report = validate_source_path(folder, SCHEMAS[source], now=NOW)
    assert report.rows == len(frame)
    assert report.files == tuple(str(p) for p in sorted(folder.glob("part-*.parquet")))
    assert report.min_timestamp == frame["event_timestamp"].min().to_pydatetime()
    assert report.max_timestamp == frame["event_timestamp"].max().to_pydatetime()


def test_drifted_data_with_missing_values_and_new_category_passes(tmp_path: Path) -> None:
    scenario = Scenario(
        missing_share={"txn_count_1d": 0.2, "night_txn_share_1d": 0.2, "preferred_channel": 0.1},
        new_category="crypto_wallet",
        covariate_shift={"avg_amount_30d": 3.0},
    )
    daily = generate_sources(GeneratorConfig(n_customers=40, days=4, scenario=scenario))[
        DAILY_SOURCE
    ]
    assert daily["txn_count_1d"].isna().any()  # NaN in features is a missing value, not an error
    validate_frame(daily, DAILY_SCHEMA, source=DAILY_SOURCE, now=NOW)
    report = validate_source_path(write_source(daily, tmp_path)[0].parent, DAILY_SCHEMA, now=NOW)
    assert report.rows == len(daily)


def test_small_future_skew_is_tolerated(daily: pd.DataFrame) -> None:
    latest = daily["event_timestamp"].max().to_pydatetime()
    validate_frame(daily, DAILY_SCHEMA, source="d", now=latest - timedelta(minutes=1))
    with pytest.raises(SourceDataError, match="future"):
        validate_frame(daily, DAILY_SCHEMA, source="d", now=latest - timedelta(hours=1))


def test_extra_columns_rejected_only_when_disallowed(daily: pd.DataFrame) -> None:
    extra = daily.assign(debug_note="x")
    validate_frame(extra, DAILY_SCHEMA, source="d", now=NOW)
    strict = SourceSchema(
        name=DAILY_SCHEMA.name,
        key_columns=DAILY_SCHEMA.key_columns,
        timestamp_column=DAILY_SCHEMA.timestamp_column,
        created_column=DAILY_SCHEMA.created_column,
        columns=DAILY_SCHEMA.columns,
        allow_extra_columns=False,
    )
    with pytest.raises(SourceDataError, match=r"column 'debug_note'.*unexpected"):
        validate_frame(extra, strict, source="d", now=NOW)


def test_empty_frame_raises(daily: pd.DataFrame) -> None:
    with pytest.raises(SourceDataError, match=r"'d'.*empty"):
        validate_frame(daily.iloc[:0], DAILY_SCHEMA, source="d", now=NOW)


def test_mixed_type_column_raises_naming_it(daily: pd.DataFrame) -> None:
    mixed = daily.astype({"txn_amount_avg_1d": object})
    mixed.loc[0, "txn_amount_avg_1d"] = "12,50"
    with pytest.raises(SourceDataError, match=r"column 'txn_amount_avg_1d'.*mixed"):
        validate_frame(mixed, DAILY_SCHEMA, source="d", now=NOW)


# ---------------------------------------------------------------------------- files and folders


def test_truncated_file_raises(tmp_path: Path, daily: pd.DataFrame) -> None:
    (path,) = write_source(daily, tmp_path, partition_by_day=False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SourceDataError, match="unreadable or truncated") as info:
        validate_source_path(tmp_path, DAILY_SCHEMA, now=NOW)
    assert str(path) in str(info.value)


def test_garbage_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "part-20260102.parquet"
    path.write_text("this is not parquet")
    with pytest.raises(SourceDataError, match="unreadable") as info:
        validate_source_path(path, DAILY_SCHEMA, now=NOW)
    assert str(path) in str(info.value)


def test_empty_file_raises(tmp_path: Path, daily: pd.DataFrame) -> None:
    path = tmp_path / "part-20260102.parquet"
    pq.write_table(pa.Table.from_pandas(daily.iloc[:0], preserve_index=False), path)
    with pytest.raises(SourceDataError, match=r"empty \(0 rows\)") as info:
        validate_source_path(tmp_path, DAILY_SCHEMA, now=NOW)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("make", ["empty-folder", "missing-path"])
def test_nothing_to_read_raises(tmp_path: Path, make: str) -> None:
    target = tmp_path / "daily"
    if make == "empty-folder":
        target.mkdir()
        (target / ".part-20260102.parquet.123.tmp").write_bytes(b"half")
    with pytest.raises(SourceDataError, match=r"no parquet files|does not exist") as info:
        validate_source_path(target, DAILY_SCHEMA, now=NOW)
    assert str(target) in str(info.value)


def test_duplicates_across_files_name_both_files(tmp_path: Path, daily: pd.DataFrame) -> None:
    first_day = daily[daily["event_timestamp"] == daily["event_timestamp"].min()]
    (a,) = write_source(first_day, tmp_path / "a")
    (b,) = write_source(first_day.head(2), tmp_path / "b")
    with pytest.raises(SourceDataError, match="same key and timestamp") as info:
        validate_source_path(tmp_path, DAILY_SCHEMA, now=NOW)
    message = str(info.value)
    assert str(a) in message
    assert str(b) in message
    assert "column 'event_timestamp'" in message
    assert message.count("customer_id=") == 2


def test_hidden_temp_files_are_ignored(tmp_path: Path, daily: pd.DataFrame) -> None:
    write_source(daily, tmp_path)
    (tmp_path / ".part-20260102.parquet.99.tmp").write_bytes(b"half a file")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    assert validate_source_path(tmp_path, DAILY_SCHEMA, now=NOW).rows == len(daily)


def test_nullable_feature_values_pass_in_files(tmp_path: Path, daily: pd.DataFrame) -> None:
    daily.loc[[1, 2], "night_txn_share_1d"] = np.nan
    daily.loc[[3], "preferred_channel"] = None
    (path,) = write_source(daily, tmp_path, partition_by_day=False)
    assert validate_source_path(path, DAILY_SCHEMA, now=NOW).rows == len(daily)


# ---------------------------------------------------------------------------- schema definitions


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"columns": {"x": "decimal"}}, "kind 'decimal'"),
        ({"columns": {"event_timestamp": "int"}}, "must have kind 'timestamp'"),
        ({"columns": {"x": "string"}, "bounds": {"x": (0.0, 1.0)}}, "not a numeric"),
        ({"columns": {"x": "float"}, "bounds": {"x": (2.0, 1.0)}}, "empty"),
        ({"key_columns": ()}, "key_columns"),
    ],
)
def test_invalid_schema_definitions_raise(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {
        "name": "s",
        "key_columns": ("k",),
        "timestamp_column": "event_timestamp",
        "created_column": None,
        "columns": {},
    }
    with pytest.raises(ValueError, match=match):
        SourceSchema(**{**base, **kwargs})  # type: ignore[arg-type]


def test_schema_lists_keys_and_timestamps_first() -> None:
    assert DAILY_SCHEMA.required_columns[:3] == ("customer_id", "event_timestamp", "created")
    assert len(DAILY_SCHEMA.required_columns) == 13
    assert SCHEMAS[TRANSACTIONS_SOURCE].created_column is None


def test_naive_now_is_rejected(daily: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_frame(daily, DAILY_SCHEMA, source="d", now=datetime(2026, 3, 1))


def test_corrections_with_a_later_created_pass_but_exact_repeats_do_not(
    tmp_path: Path, daily: pd.DataFrame
) -> None:
    correction = daily.head(3).copy()
    correction["created"] = correction["created"] + pd.Timedelta(hours=1)
    corrected = pd.concat([daily, correction], ignore_index=True)
    validate_frame(corrected, DAILY_SCHEMA, source="daily", now=NOW)
    repeated = pd.concat([daily, daily.head(3)], ignore_index=True)
    with pytest.raises(SourceDataError, match="same key and timestamp"):
        validate_frame(repeated, DAILY_SCHEMA, source="daily", now=NOW)

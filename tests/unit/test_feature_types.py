"""Every Feast type has a validation rule, contracts come from Field tags, and the consistency
check compares complex values in one canonical form (and still sees a difference)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import (
    Array,
    Bool,
    Bytes,
    Float32,
    Float64,
    ImageBytes,
    Int32,
    Int64,
    Json,
    Map,
    PdfBytes,
    Set,
    String,
    Struct,
    UnixTimestamp,
    Uuid,
)

from mlre.data.validation import SourceSchema, validate_source_path
from mlre.errors import FeatureStoreError, SourceDataError
from mlre.features.consistency import _values_equal, canonical
from mlre.features.contracts import contract, parse_contract
from mlre.features.materialize import feast_ready
from mlre.features.sources import kind_of, schema_for_view

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("dtype", "kind"),
    [
        (Bool, "bool"),
        (Bytes, "bytes"),
        (PdfBytes, "bytes"),
        (ImageBytes, "bytes"),
        (UnixTimestamp, "timestamp"),
        (Int32, "int"),
        (Int64, "int"),
        (Float32, "float"),
        (Float64, "float"),
        (String, "string"),
        (Uuid, "string"),
        (Map, "map"),
        (Json, "json"),
        (Struct({"city": String, "zip": Int32}), "struct"),
        (Array(Int64), "list<int>"),
        (Array(String), "list<string>"),
        (Array(UnixTimestamp), "list<timestamp>"),
        (Array(Array(Float32)), "list<list<float>>"),
        (Set(Bytes), "list<bytes>"),
    ],
    ids=str,
)
def test_every_feast_type_has_a_kind(dtype: object, kind: str) -> None:
    assert kind_of(dtype) == kind


def test_contract_tags_round_trip() -> None:
    tags = contract(min=0, max=1.5, categories=["a", "b"], nullable=False)
    assert tags == {
        "contract:min": "0.0",
        "contract:max": "1.5",
        "contract:categories": '["a", "b"]',
        "contract:nullable": "false",
    }
    parsed = parse_contract(tags, where="view v, field f")
    assert (parsed.low, parsed.high, parsed.categories, parsed.nullable) == (
        0.0, 1.5, ("a", "b"), False,
    )  # fmt: skip
    assert parse_contract({"contract:min": "3"}, where="w").bounds == (3.0, float("inf"))
    assert parse_contract({}, where="w").bounds is None


@pytest.mark.parametrize(
    ("tags", "named"),
    [
        ({"contract:min": "zero"}, "contract:min='zero'"),
        ({"contract:max": "nan"}, "contract:max='nan'"),
        ({"contract:min": "5", "contract:max": "1"}, "is above"),
        ({"contract:categories": "a,b"}, "JSON list of strings"),
        ({"contract:categories": "[]"}, "non-empty"),
        ({"contract:nullable": "maybe"}, '"true" or "false"'),
    ],
)
def test_malformed_contract_tags_name_the_field_and_tag(tags: dict[str, str], named: str) -> None:
    with pytest.raises(FeatureStoreError, match="view 'v', field 'f'") as info:
        parse_contract(tags, where="Feature view 'v', field 'f'")
    assert named in str(info.value)
    assert "mlre apply" in str(info.value)


def _view(*fields: Field, mapping: dict[str, str] | None = None) -> FeatureView:
    seller = Entity(name="seller", join_keys=["seller_id"], value_type=ValueType.STRING)
    source = FileSource(
        name="s",
        path="/nowhere",
        timestamp_field="ts",
        created_timestamp_column="created",
        field_mapping=mapping or {},
    )
    key = Field(name="seller_id", dtype=String)  # as `feast apply` infers it
    return FeatureView(name="v", entities=[seller], ttl=timedelta(0), schema=[key, *fields],
                       source=source)  # fmt: skip


def test_schema_reads_the_contract_of_any_repo_by_field_not_by_column_name() -> None:
    view = _view(
        Field(name="rating", dtype=Float32, tags=contract(min=0, max=5, nullable=False)),
        Field(name="tier", dtype=String, tags=contract(categories=["gold", "silver"])),
        Field(name="amount", dtype=Float64),  # the demo's column name: no bounds borrowed
        Field(name="attrs", dtype=Map),
        mapping={"seller_rating": "rating"},
    )
    schema = schema_for_view(view)
    assert dict(schema.bounds) == {"seller_rating": (0.0, 5.0)}
    assert dict(schema.categories) == {"tier": ("gold", "silver")}
    assert schema.not_null == ("seller_rating",)
    assert schema.columns["attrs"] == "map"
    assert schema.columns["seller_id"] == "string"


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        (Field(name="tier", dtype=String, tags=contract(min=0)), "not a number"),
        (Field(name="n", dtype=Int64, tags=contract(categories=["x"])), "not a String"),
    ],
)
def test_a_contract_that_does_not_fit_its_type_is_refused(field: Field, problem: str) -> None:
    with pytest.raises(FeatureStoreError, match=problem) as info:
        schema_for_view(_view(field))
    assert f"field {field.name!r}" in str(info.value)


# --- validation of complex columns -----------------------------------------------------------


def _write(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")
    return folder


def _table(**columns: pa.Array) -> pa.Table:
    n = len(next(iter(columns.values())))
    base = {
        "seller_id": pa.array([f"s{i}" for i in range(n)]),
        "ts": pa.array([NOW - timedelta(days=1)] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table({**base, **columns})


def _schema(columns: dict[str, str], **extra: object) -> SourceSchema:
    return SourceSchema(
        name="s",
        key_columns=("seller_id",),
        timestamp_column="ts",
        created_column=None,
        columns=columns,
        **extra,  # type: ignore[arg-type]
    )


COMPLEX_COLUMNS = {
    "flag": ("bool", pa.array([True, None, False])),
    "blob": ("bytes", pa.array([b"\x00", None, b"ab"])),
    "when": ("timestamp", pa.array([NOW, None, NOW], pa.timestamp("us", tz="UTC"))),
    "counts": ("list<int>", pa.array([[1, 2], None, []], pa.list_(pa.int64()))),
    "labels": ("list<string>", pa.array([["a"], ["b", None], None])),
    "attrs_text": ("map", pa.array(['{"k": "v"}', None, "{}"])),
    "attrs_map": ("map", pa.array([[("k", "v")], None, []], pa.map_(pa.string(), pa.string()))),
    "doc": ("json", pa.array(['{"x": [1]}', "3", None])),
    "address": ("struct", pa.array([{"city": "c", "zip": 1}, None, {"city": None, "zip": 2}])),
}


def test_every_complex_kind_validates_its_own_arrow_layout(tmp_path: Path) -> None:
    table = _table(**{name: array for name, (_, array) in COMPLEX_COLUMNS.items()})
    schema = _schema({name: kind for name, (kind, _) in COMPLEX_COLUMNS.items()})
    report = validate_source_path(_write(tmp_path / "src", table), schema, now=NOW)
    assert report.rows == 3


@pytest.mark.parametrize(
    ("kind", "array", "message"),
    [
        ("list<int>", pa.array([["a"], None, []]), "expected list<int>, found list<"),
        ("struct", pa.array(["x", "y", "z"]), "expected struct, found string"),
        ("bytes", pa.array([1, 2, 3]), "expected bytes, found int64"),
        ("map", pa.array(['{"k": 1}', "[1, 2]", None]), "not a JSON object"),
        ("json", pa.array(['{"k": 1}', "{oops", None]), "not JSON"),
    ],
)
def test_complex_columns_of_the_wrong_shape_are_refused(
    tmp_path: Path, kind: str, array: pa.Array, message: str
) -> None:
    folder = _write(tmp_path / "src", _table(value=array))
    with pytest.raises(SourceDataError, match="column 'value'") as info:
        validate_source_path(folder, _schema({"value": kind}), now=NOW)
    assert message in str(info.value)


def test_categories_and_nullability_from_the_contract_are_enforced(tmp_path: Path) -> None:
    schema = _schema(
        {"tier": "string", "score": "float"},
        categories={"tier": ("gold", "silver")},
        not_null=("score",),
    )
    good = _table(tier=pa.array(["gold", None, "silver"]), score=pa.array([1.0, 2.0, 3.0]))
    validate_source_path(_write(tmp_path / "good", good), schema, now=NOW)
    unknown = _table(tier=pa.array(["gold", "platinum", "silver"]), score=pa.array([1.0] * 3))
    with pytest.raises(SourceDataError, match=r"column 'tier'.*outside the contract") as info:
        validate_source_path(_write(tmp_path / "unknown", unknown), schema, now=NOW)
    assert "'platinum'" in str(info.value)
    assert "seller_id='s1'" in str(info.value)
    missing = _table(tier=pa.array(["gold"] * 3), score=pa.array([1.0, np.nan, None]))
    with pytest.raises(SourceDataError, match=r"column 'score'.*at least 2 rows have no value"):
        validate_source_path(_write(tmp_path / "missing", missing), schema, now=NOW)


# --- the consistency check's canonical values ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "online", "offline"),
    [
        ("map", {"k": "1"}, '{"k": "1"}'),
        ("map", {"k": "1"}, [("k", "1")]),
        ("json", {"x": [1]}, '{"x": [1]}'),
        ("struct", {"city": "c", "zip": 1001.0}, {"city": "c", "zip": 1001}),
        ("list<float>", [1.5, 2.0], np.array([1.5, 2.0])),
        ("list<string>", ["a", "b"], np.array(["a", "b"], dtype=object)),
        ("bytes", b"\x01", bytearray(b"\x01")),
        ("timestamp", datetime(2026, 1, 1, 12, tzinfo=UTC),
         pd.Timestamp("2026-01-01 12:00:00.400", tz="UTC")),
        ("list<int>", None, pd.NA),
    ],
)  # fmt: skip
def test_online_and_offline_forms_of_one_value_are_equal(
    kind: str, online: object, offline: object
) -> None:
    assert _values_equal(pd.Series([online]), pd.Series([offline]), 1e-9, kind).tolist() == [True]


@pytest.mark.parametrize(
    ("kind", "online", "offline"),
    [
        ("map", {"k": "1"}, '{"k": "2"}'),
        ("map", {"k": "1"}, '{"k": "1", "j": "1"}'),
        ("json", {"x": [1]}, '{"x": [1, 2]}'),
        ("struct", {"city": "c", "zip": 1001.0}, {"city": "d", "zip": 1001}),
        ("list<float>", [1.5, 2.0], np.array([2.0, 1.5])),
        ("list<int>", [1], None),
        ("bytes", b"\x01", b"\x02"),
        ("timestamp", datetime(2026, 1, 1, 12, tzinfo=UTC), pd.Timestamp("2026-01-01 12:00:01Z")),
    ],
)
def test_a_changed_complex_value_is_a_mismatch(kind: str, online: object, offline: object) -> None:
    assert _values_equal(pd.Series([online]), pd.Series([offline]), 1e-9, kind).tolist() == [False]


def test_canonical_form_is_plain_python() -> None:
    assert canonical('{"a": [1, {"b": 2}]}', "json") == {"a": [1.0, {"b": 2.0}]}
    assert canonical(np.nan, "list<float>") is None


def test_arrow_maps_reach_feast_as_json_objects() -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "attrs": pa.array([[("k", "v")], None, []], pa.map_(pa.string(), pa.string())),
            "n": pa.array([1, 2, 3]),
        }
    )
    ready = feast_ready(batch)
    assert [None if v is None else json.loads(v) for v in ready.column("attrs").to_pylist()] == [
        {"k": "v"}, None, {},
    ]  # fmt: skip
    assert ready.column("n").equals(batch.column("n"))

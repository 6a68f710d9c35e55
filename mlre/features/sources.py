"""Source-data validation driven by the Feast definitions: the repo's schema is the contract.

Each field's Feast type gives the column kind the source must have (every Feast type has one:
primitives, arrays, Map, Json, Struct; a type with no finer rule only has to be present), and its
contract tags (`mlre.features.contracts`) give value ranges, categories and nullability.
"""

from __future__ import annotations

from datetime import datetime

from feast import FeatureStore, FeatureView, Field
from feast.types import Array, PrimitiveFeastType, Set, Struct

from mlre.data.validation import SourceSchema, ValidationReport, validate_source_path
from mlre.errors import FeatureStoreError
from mlre.features.contracts import FieldContract, parse_contract
from mlre.features.materialize import view_spec

# Feast primitive type name -> validator kind (mlre.data.validation).
_PRIMITIVE_KINDS = {
    "INT32": "int",
    "INT64": "int",
    "FLOAT32": "float",
    "FLOAT64": "float",
    "STRING": "string",
    "UUID": "string",
    "TIME_UUID": "string",
    "DECIMAL": "string",
    "BOOL": "bool",
    "UNIX_TIMESTAMP": "timestamp",
    "ZONED_TIMESTAMP": "timestamp",
    "BYTES": "bytes",
    "PDF_BYTES": "bytes",
    "IMAGE_BYTES": "bytes",
    "MAP": "map",
    "SCALAR_MAP": "map",
    "JSON": "json",
}


def kind_of(dtype: object) -> str:
    """The validator's column kind for any Feast type ("any": present, type not checked)."""
    if isinstance(dtype, PrimitiveFeastType):
        return _PRIMITIVE_KINDS.get(dtype.name, "any")
    if isinstance(dtype, Array | Set):
        return f"list<{kind_of(dtype.base_type)}>"
    if isinstance(dtype, Struct):
        return "struct"
    return "any"


def _contract(feature_view: FeatureView, field: Field, column: str, kind: str) -> FieldContract:
    """The field's contract, checked against its kind (bounds need numbers, categories text)."""
    where = f"Feature view {feature_view.name!r}, field {field.name!r}"
    found = parse_contract(field.tags or {}, where=where)
    if found.bounds and kind not in ("int", "float"):
        raise FeatureStoreError(
            f"{where} (source column {column!r}) declares contract:min/max but is {field.dtype}, "
            "not a number; remove the tags or fix the field's dtype."
        )
    if found.categories and kind != "string":
        raise FeatureStoreError(
            f"{where} (source column {column!r}) declares contract:categories but is "
            f"{field.dtype}, not a String; remove the tag or fix the field's dtype."
        )
    return found


def schema_for_view(feature_view: FeatureView) -> SourceSchema:
    """The source schema a feature view expects: join keys, timestamps, features and contracts."""
    source = feature_view.batch_source
    mapping = {feature: column for column, feature in (source.field_mapping or {}).items()}
    columns = {e.name: kind_of(e.dtype) for e in feature_view.entity_columns}
    bounds: dict[str, tuple[float, float]] = {}
    categories: dict[str, tuple[str, ...]] = {}
    not_null: list[str] = []
    for field in feature_view.features:
        column = mapping.get(field.name, field.name)
        kind = columns[column] = kind_of(field.dtype)
        contract = _contract(feature_view, field, column, kind)
        if contract.bounds:
            bounds[column] = contract.bounds
        if contract.categories:
            categories[column] = contract.categories
        if not contract.nullable:
            not_null.append(column)
    columns[source.timestamp_field] = "timestamp"
    if source.created_timestamp_column:
        columns[source.created_timestamp_column] = "timestamp"
    return SourceSchema(
        name=source.name,
        key_columns=tuple(feature_view.join_keys),
        timestamp_column=source.timestamp_field,
        created_column=source.created_timestamp_column or None,
        columns=columns,
        bounds=bounds,
        categories=categories,
        not_null=tuple(not_null),
    )


def validate_view_source(
    store: FeatureStore, feature_view: FeatureView, *, now: datetime
) -> ValidationReport:
    """Validate a feature view's parquet source (local folder or S3 prefix) against the view."""
    uri = view_spec(store, feature_view).source_uri
    return validate_source_path(uri, schema_for_view(feature_view), now=now)

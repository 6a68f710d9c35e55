"""Source-data validation driven by the Feast definitions: the repo's schema is the contract."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from feast import FeatureStore, FeatureView
from feast.types import PrimitiveFeastType

from mlre.data.validation import (
    SourceSchema,
    ValidationReport,
    schemas_for_demo,
    validate_source_path,
)
from mlre.errors import FeatureStoreError
from mlre.features.materialize import view_spec

_KINDS = {
    "INT32": "int",
    "INT64": "int",
    "FLOAT32": "float",
    "FLOAT64": "float",
    "STRING": "string",
    "BOOL": "bool",
    "UNIX_TIMESTAMP": "timestamp",
}


def kind_of(dtype: object) -> str:
    """The validator's column kind for a Feast type (lists and maps are not batch features here)."""
    if isinstance(dtype, PrimitiveFeastType) and dtype.name in _KINDS:
        return _KINDS[dtype.name]
    raise FeatureStoreError(f"Feast type {dtype} has no source-validation rule; add one to _KINDS.")


def schema_for_view(feature_view: FeatureView) -> SourceSchema:
    """The source schema a feature view expects: its join keys, timestamps and features."""
    source = feature_view.batch_source
    mapping = {feature: column for column, feature in (source.field_mapping or {}).items()}
    columns = {e.name: kind_of(e.dtype) for e in feature_view.entity_columns}
    columns.update({mapping.get(f.name, f.name): kind_of(f.dtype) for f in feature_view.features})
    columns[source.timestamp_field] = "timestamp"
    if source.created_timestamp_column:
        columns[source.created_timestamp_column] = "timestamp"
    return SourceSchema(
        name=source.name,
        key_columns=tuple(feature_view.join_keys),
        timestamp_column=source.timestamp_field,
        created_column=source.created_timestamp_column or None,
        columns=columns,
        bounds=known_bounds(columns),
    )


def known_bounds(columns: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Sanity bounds of numeric columns the demo schemas know (same name, same meaning).

    Feast fields carry no value range, so without these an amount written in cents or a share
    written in percent would pass validation and reach the online store.
    """
    known = {c: b for schema in schemas_for_demo().values() for c, b in schema.bounds.items()}
    numeric = {c for c, kind in columns.items() if kind in ("int", "float")}
    return {c: known[c] for c in sorted(numeric & known.keys())}


def validate_view_source(
    store: FeatureStore, feature_view: FeatureView, *, now: datetime
) -> ValidationReport:
    """Validate a feature view's local parquet source against the view's own schema."""
    uri = view_spec(store, feature_view).source_uri
    if "://" in uri and not uri.startswith("file://"):
        raise FeatureStoreError(
            f"Source {uri} of {feature_view.name!r} is remote; validate it where it lands "
            "(the ingestion job) or pass validate_sources=False."
        )
    return validate_source_path(
        Path(uri.removeprefix("file://")), schema_for_view(feature_view), now=now
    )

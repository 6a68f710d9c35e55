"""Feast definitions of the materialize benchmark's complex-typed view (bench/materialize.py).

Not part of the platform's feature repo: the benchmark copies this file into a fresh repo per
run, next to a generated feature_store.yaml. One view mixes primitives with every complex type
Feast 0.67 materializes: a Map (JSON-object text in the source, as Feast's own materialize wants
it), Arrays of Float64 and String, a Struct and a Json field. The source is rooted at the lake
the benchmark passes in (`repo_lake_uri()`, as in feature_repo/definitions.py).
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float64, Int32, Int64, Json, Map, String, Struct

from mlre.features.store import repo_lake_uri

LAKE_URI = repo_lake_uri()

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A card holder (customer_id).",
)

customer_profile_source = FileSource(
    name="customer_profile_source",
    path=f"{LAKE_URI}/sources/customer_profile",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Daily customer profile snapshots (parquet, one file per day).",
)

customer_profile_fv = FeatureView(
    name="customer_profile_fv",
    entities=[customer],
    ttl=timedelta(days=2),
    schema=[
        Field(name="visits_1d", dtype=Int64, description="Sessions in the day."),
        Field(name="spend_1d", dtype=Float64, description="Spend in the day (nulls included)."),
        Field(name="segment", dtype=String, description="Marketing segment."),
        Field(name="is_active", dtype=Bool, description="Active in the last 30 days."),
        Field(name="channel_fees", dtype=Map, description="Fee per channel (JSON object)."),
        Field(name="recent_amounts", dtype=Array(Float64), description="Last amounts."),
        Field(name="recent_merchants", dtype=Array(String), description="Last merchants."),
        Field(
            name="address",
            dtype=Struct({"city": String, "zip": Int32}),
            description="Billing address.",
        ),
        Field(name="preferences", dtype=Json, description="Account preferences (JSON)."),
    ],
    source=customer_profile_source,
    online=True,
    tags={"bench": "materialize", "kind": "complex"},
)

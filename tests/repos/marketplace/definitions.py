"""Feast definitions of a marketplace: sellers, the regions they ship to, and order-time features.

A second repository for the tests, written the way a Feast user would write one (no import of the
platform): every Feast value type in one view, a composite entity key behind a push source, a
request source, on-demand views in both python and pandas mode, and feature services per model.
Paths are relative to this folder, so a copy of it is a store of its own.

Contracts are plain Field tags the platform reads back from the registry:
`contract:min` / `contract:max` (numbers as strings), `contract:categories` (a JSON list) and
`contract:nullable` ("false": a value must always be present).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    PushSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import (
    Array,
    Bool,
    Bytes,
    Float32,
    Float64,
    Int32,
    Int64,
    Json,
    Map,
    String,
    Struct,
    UnixTimestamp,
)

TIERS = '["gold", "silver", "bronze"]'  # the seller tiers a model may see, as a contract tag
REQUIRED = {"contract:nullable": "false"}

# A shop selling on the marketplace, keyed by its public id (e.g. "S0007").
seller = Entity(
    name="seller",
    join_keys=["seller_id"],
    value_type=ValueType.STRING,
    description="A seller account (seller_id).",
)

# A delivery region; a seller's operational numbers differ by region.
region = Entity(
    name="region",
    join_keys=["region_id"],
    value_type=ValueType.INT64,
    description="A delivery region (region_id).",
)

# Daily snapshots of each seller's profile, one parquet file per day; corrections arrive later.
seller_profile_source = FileSource(
    name="seller_profile_source",
    path="data/seller_profile",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    # The lake calls the rating `seller_rating`; the feature is `rating`.
    field_mapping={"seller_rating": "rating"},
    description="Seller profile snapshots (parquet, one file per day).",
)

# Everything known about a seller, kept forever: the latest snapshot is valid until replaced.
seller_profile_fv = FeatureView(
    name="seller_profile_fv",
    entities=[seller],
    ttl=timedelta(0),
    schema=[
        Field(name="is_verified", dtype=Bool, description="Identity checked.", tags=REQUIRED),
        Field(name="logo_thumbnail", dtype=Bytes, description="Small PNG of the shop logo."),
        Field(name="joined_at", dtype=UnixTimestamp, description="When the seller signed up."),
        Field(
            name="rating_count",
            dtype=Int32,
            description="Ratings received.",
            tags={"contract:min": "0", "contract:max": "1000000"},
        ),
        Field(
            name="rating",
            dtype=Float32,
            description="Mean buyer rating, 1 to 5 stars.",
            tags={"contract:min": "1", "contract:max": "5"},
        ),
        Field(
            name="lifetime_orders",
            dtype=Int64,
            description="Orders since sign-up.",
            tags={"contract:min": "0", "contract:max": "1e9", **REQUIRED},
        ),
        Field(
            name="lifetime_gmv",
            dtype=Float64,
            description="Gross merchandise value since sign-up, in euros.",
            tags={"contract:min": "0", "contract:max": "1e12"},
        ),
        Field(
            name="tier",
            dtype=String,
            description="Commercial tier.",
            tags={"contract:categories": TIERS, **REQUIRED},
        ),
        Field(
            name="recent_order_counts",
            dtype=Array(Int64),
            description="Orders on each of the last days.",
        ),
        Field(name="recent_ratings", dtype=Array(Float64), description="Last ratings received."),
        Field(name="categories_sold", dtype=Array(String), description="Catalogue categories."),
        Field(name="recent_on_time", dtype=Array(Bool), description="Last deliveries on time."),
        Field(name="shipping_fees", dtype=Map, description="Fee per shipping option, in euros."),
        Field(name="settings", dtype=Json, description="Shop settings as the seller saved them."),
        Field(
            name="address",
            dtype=Struct({"city": String, "zip": Int32}),
            description="Registered address.",
        ),
    ],
    source=seller_profile_source,
    online=True,
    tags={"team": "marketplace", "cadence": "daily"},
)

# How a seller performed in a region over the last week; rows are pushed or loaded in batch.
seller_region_stats_fv = FeatureView(
    name="seller_region_stats_fv",
    entities=[seller, region],
    ttl=timedelta(days=7),
    schema=[
        Field(
            name="orders_7d",
            dtype=Int64,
            description="Orders in the region in 7 days.",
            tags={"contract:min": "0", "contract:max": "1e6", **REQUIRED},
        ),
        Field(
            name="cancel_rate_7d",
            dtype=Float64,
            description="Share of those orders cancelled.",
            tags={"contract:min": "0", "contract:max": "1"},
        ),
        Field(
            name="avg_delivery_hours",
            dtype=Float32,
            description="Mean hours from order to delivery.",
            tags={"contract:min": "0", "contract:max": "720"},
        ),
    ],
    # Streamed in by push; its batch source (the lake's daily files) backs backfills.
    source=PushSource(
        name="seller_region_push",
        # The same statistics as daily parquet files, for materialization and training sets.
        batch_source=FileSource(
            name="seller_region_stats_source",
            path="data/seller_region_stats",
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description="Seller x region weekly statistics (parquet, one file per day).",
        ),
        description="Seller x region statistics pushed by the order stream.",
    ),
    online=True,
    tags={"team": "marketplace", "cadence": "daily"},
)

# Values known only when the order is placed (sent with the scoring request).
order_request = RequestSource(
    name="order_request",
    schema=[
        Field(
            name="basket_value",
            dtype=Float64,
            description="Order total, in euros.",
            tags={"contract:min": "0", "contract:max": "1e6", **REQUIRED},
        ),
        Field(
            name="item_count",
            dtype=Int64,
            description="Items in the basket.",
            tags={"contract:min": "1", "contract:max": "1000", **REQUIRED},
        ),
    ],
)


# Order-time features: the basket against the seller's regional cancellation record.
@on_demand_feature_view(
    sources=[seller_region_stats_fv, order_request],
    schema=[
        # Bare fields: Feast 0.67 compares declared outputs with inferred ones INCLUDING tags
        # and description, so an on-demand output cannot carry a contract (apply fails).
        Field(name="basket_per_item", dtype=Float64),
        Field(name="cancel_risk_x_basket", dtype=Float64),
    ],
    mode="python",
    description="Basket size per item, and the basket weighted by the regional cancel rate.",
)
def order_features(inputs: dict) -> dict:
    """Columns in, columns out: one list per name, one element per order (None stays None)."""
    per_item = []
    risk = []
    for basket, items, rate in zip(
        inputs["basket_value"], inputs["item_count"], inputs["cancel_rate_7d"], strict=True
    ):
        per_item.append(None if basket is None or not items else float(basket) / int(items))
        risk.append(None if basket is None or rate is None else float(basket) * float(rate))
    return {"basket_per_item": per_item, "cancel_risk_x_basket": risk}


# One number summing up a seller's reputation: the rating, trusted more with more ratings.
@on_demand_feature_view(
    sources=[seller_profile_fv[["rating", "rating_count"]]],
    schema=[Field(name="reputation", dtype=Float64)],  # bare, as above
    mode="pandas",
    description="rating x log1p(rating_count); missing when either input is missing.",
)
def seller_profile_derived(inputs: pd.DataFrame) -> pd.DataFrame:
    """Reputation score, vectorised over the rows."""
    rating = pd.to_numeric(inputs["rating"], errors="coerce").to_numpy(dtype="float64")
    count = pd.to_numeric(inputs["rating_count"], errors="coerce").to_numpy(dtype="float64")
    return pd.DataFrame({"reputation": rating * np.log1p(count)}, index=inputs.index)


# Inputs of the cancellation model v1: model-usable profile fields, regional stats, order features.
order_model_v1 = FeatureService(
    name="order_model_v1",
    features=[
        seller_profile_fv[["is_verified", "rating", "rating_count", "tier"]],
        seller_region_stats_fv,
        order_features,
    ],
    description="Inputs of the order-cancellation model, version 1.",
)

# Inputs of the cancellation model v2: v1 plus the reputation score.
order_model_v2 = FeatureService(
    name="order_model_v2",
    features=[
        seller_profile_fv[["is_verified", "rating", "rating_count", "tier"]],
        seller_region_stats_fv,
        order_features,
        seller_profile_derived,
    ],
    description="Inputs of the order-cancellation model, version 2 (adds reputation).",
)

# The whole seller profile, every complex type included: for support screens, not for a model.
seller_everything = FeatureService(
    name="seller_everything",
    features=[seller_profile_fv],
    description="Every seller profile field, for reading.",
)

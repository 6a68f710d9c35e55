"""Feast definitions for the card-fraud demo: one entity, two batch views, one request-time view.

Source paths are rooted at the settings' lake (`Settings.lake_uri`: MLRE_OFFLINE_URI, s3://... in
the cloud, else MLRE_HOME/lake). Feast evaluates definitions on import, by design, so the root is
asked for once, here: `mlre apply` passes the settings it runs with, a bare `feast` command gets
the process's own (mlre.features.store.repo_lake_uri).

Every field carries its contract (`contract(...)`: value range, nullability) as Field tags; source
validation reads them back from the registry. The ranges are generous sanity bounds: they catch
unit mistakes (cents for units, a share in percent), not drift. Missing values are allowed (the
models impute them) and channels are not closed (a new one is drift, which the drift check sees).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

from mlre.features.contracts import contract
from mlre.features.store import repo_lake_uri

LAKE_URI = repo_lake_uri()
COUNT = contract(min=0, max=1e9)  # a count of events
SHARE = contract(min=0, max=1)  # a fraction of a count
AMOUNT = contract(min=0, max=1e12)  # money, in currency units (not cents)

# A card holder; every behavioural aggregate is keyed by it.
customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A card holder (customer_id).",
)

# Daily behavioural aggregates, one row per customer per day, stamped at the end of the day.
customer_daily_stats_source = FileSource(
    name="customer_daily_stats_source",
    path=f"{LAKE_URI}/sources/customer_daily_stats",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Daily card-activity aggregates per customer (parquet, one file per day).",
)

# Hourly aggregates, sparse: a row only for hours in which the customer was active.
customer_hourly_stats_source = FileSource(
    name="customer_hourly_stats_source",
    path=f"{LAKE_URI}/sources/customer_hourly_stats",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Hourly card-activity aggregates per customer, active hours only.",
)

# What a customer spent yesterday; a value older than two days is treated as missing.
customer_daily_stats_fv = FeatureView(
    name="customer_daily_stats_fv",
    entities=[customer],
    ttl=timedelta(days=2),
    schema=[
        Field(name="txn_count_1d", dtype=Int64, description="Transactions in the day.", tags=COUNT),
        Field(
            name="txn_amount_sum_1d",
            dtype=Float64,
            description="Total spend in the day.",
            tags=AMOUNT,
        ),
        Field(
            name="txn_amount_avg_1d",
            dtype=Float64,
            description="Mean transaction amount.",
            tags=AMOUNT,
        ),
        Field(
            name="txn_amount_max_1d", dtype=Float64, description="Largest transaction.", tags=AMOUNT
        ),
        Field(
            name="distinct_merchants_1d", dtype=Int64, description="Distinct merchants.", tags=COUNT
        ),
        Field(
            name="night_txn_share_1d",
            dtype=Float64,
            description="Share between 0h and 6h.",
            tags=SHARE,
        ),
        Field(name="foreign_txn_share_1d", dtype=Float64, description="Share abroad.", tags=SHARE),
        Field(name="avg_amount_30d", dtype=Float64, description="30-day mean amount.", tags=AMOUNT),
        Field(
            name="chargeback_count_90d",
            dtype=Int64,
            description="Chargebacks in 90 days.",
            tags=COUNT,
        ),
        Field(name="preferred_channel", dtype=String, description="Most used channel."),
    ],
    source=customer_daily_stats_source,
    online=True,
    tags={"team": "fraud", "cadence": "daily"},
)

# Activity in the last active hour; bursts of failed authorisations are a classic fraud signal.
customer_hourly_stats_fv = FeatureView(
    name="customer_hourly_stats_fv",
    entities=[customer],
    ttl=timedelta(days=1),
    schema=[
        Field(
            name="txn_count_1h", dtype=Int64, description="Transactions in the hour.", tags=COUNT
        ),
        Field(
            name="txn_amount_sum_1h", dtype=Float64, description="Spend in the hour.", tags=AMOUNT
        ),
        Field(
            name="failed_auth_count_1h",
            dtype=Int64,
            description="Failed authorisations.",
            tags=COUNT,
        ),
    ],
    source=customer_hourly_stats_source,
    online=True,
    tags={"team": "fraud", "cadence": "hourly"},
)

# Values known only when the transaction arrives (sent with the scoring request).
transaction_request = RequestSource(
    name="transaction_request",
    schema=[Field(name="amount", dtype=Float64, description="Transaction amount.")],
)


# How unusual this amount is for the customer: the request-time value against their history.
@on_demand_feature_view(
    sources=[customer_daily_stats_fv, transaction_request],
    schema=[
        Field(name="amount_to_avg_30d_ratio", dtype=Float64),
        Field(name="amount_log", dtype=Float64),
    ],
    mode="python",
    description="Request amount relative to the customer's 30-day average.",
)
def transaction_amount_features(inputs: dict[str, list[Any]]) -> dict[str, list[float]]:
    """Ratio of the request amount to the 30-day mean (1.0 when the mean is missing or zero).

    Python mode (columns as lists) with numpy on them: the online path calls this once per
    request batch without building a DataFrame, which at one row costs more than the arithmetic;
    offline retrieval passes whole columns the same way.
    """
    amount = np.asarray(inputs["amount"], dtype="float64")  # None (missing) becomes NaN
    average = np.asarray(inputs["avg_amount_30d"], dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = amount / np.where(average > 0, average, np.nan)
    ratio[np.isnan(ratio)] = 1.0
    amount_log = np.log1p(np.clip(amount, 0.0, None))
    return {"amount_to_avg_30d_ratio": ratio.tolist(), "amount_log": amount_log.tolist()}


# Features of fraud model v1: daily behaviour plus the request-time amount features.
fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[customer_daily_stats_fv, transaction_amount_features],
    description="Inputs of the fraud model, version 1.",
)

# Features of fraud model v2: v1 plus hourly activity bursts.
fraud_model_v2 = FeatureService(
    name="fraud_model_v2",
    features=[customer_daily_stats_fv, customer_hourly_stats_fv, transaction_amount_features],
    description="Inputs of the fraud model, version 2 (adds hourly bursts).",
)

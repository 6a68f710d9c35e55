"""Deterministic source data for the materialize benchmark's complex-typed view.

The view is defined in bench/feature_repos/complex/definitions.py: `customer_profile_fv`, one row
per customer per day with four primitives (Int64, Float64 with nulls, String, Bool), a Map (a
JSON-object text column: Feast 0.67's own materialize reads a Map from a dict or JSON text, not
from an Arrow map column), an Array(Float64) and an Array(String) of varying lengths (empty lists
included), a Struct({"city": String, "zip": Int32}) with nulls, and a Json field (JSON text).

Each day is drawn from its own seeded `numpy.random.Generator` ([seed, day]), so a day's file
does not depend on how many days are written. Timestamps are timestamp[us, UTC] like the
project's other sources: event at the end of the day it describes, `created` five minutes later.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SOURCE = "customer_profile"
ID_OFFSET = 1000  # customer ids start here, as in mlre.data.generator
VERSION = 1  # bump when the data change: a manifest with another version is regenerated

_TS = pa.timestamp("us", tz="UTC")
_ADDRESS = pa.struct([("city", pa.string()), ("zip", pa.int32())])
# Column by column, with the Feast type each one feeds.
SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("event_timestamp", _TS, nullable=False),
        pa.field("created", _TS, nullable=False),
        pa.field("visits_1d", pa.int64()),  # Int64
        pa.field("spend_1d", pa.float64()),  # Float64, ~3% null
        pa.field("segment", pa.string()),  # String
        pa.field("is_active", pa.bool_()),  # Bool
        pa.field("channel_fees", pa.string()),  # Map, JSON object text, ~2% null
        pa.field("recent_amounts", pa.list_(pa.float64())),  # Array(Float64), 0-8 items
        pa.field("recent_merchants", pa.list_(pa.string())),  # Array(String), 0-5 items
        pa.field("address", _ADDRESS),  # Struct({"city": String, "zip": Int32}), ~2% null
        pa.field("preferences", pa.string()),  # Json
    ]
)
FEATURES: tuple[str, ...] = tuple(SCHEMA.names[3:])

SEGMENTS = np.array(["new", "regular", "vip", "dormant"])
CHANNELS: tuple[str, ...] = ("pos", "online", "atm", "contactless")
MERCHANTS = np.array(
    ["grocery", "restaurants", "fuel", "online_retail", "electronics", "travel", "entertainment"]
)
CITIES = np.array(["Lyon", "Porto", "Ghent", "Leipzig", "Turin", "Malmo", "Brno", "Cork"])
LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "pt")


def _lists(lengths: np.ndarray, values: pa.Array) -> pa.ListArray:
    """A list column from per-row lengths and the flat values (len(values) == lengths.sum())."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _stamp(when: datetime, n: int) -> pa.Array:
    micros = int(when.timestamp() * 1_000_000)
    return pa.array(np.full(n, micros, dtype=np.int64)).cast(_TS)


def day_table(customers: int, day: int, start: datetime, seed: int) -> pa.Table:
    """Every customer's row for one day."""
    rng = np.random.default_rng([seed, day])
    n = customers
    event = start + timedelta(days=day + 1)  # the end of the day described
    spend = np.round(rng.gamma(2.0, 40.0, n), 2)
    spend_null = rng.random(n) < 0.03
    fees = np.round(rng.uniform(0.0, 3.0, (n, len(CHANNELS))), 2)
    offered = rng.random((n, len(CHANNELS))) < 0.7
    fees_null = rng.random(n) < 0.02
    channel_fees = [
        None
        if fees_null[i]
        else json.dumps({c: float(fees[i, j]) for j, c in enumerate(CHANNELS) if offered[i, j]})
        for i in range(n)
    ]
    amount_lengths = rng.integers(0, 9, n)
    amounts = np.round(rng.gamma(2.0, 30.0, int(amount_lengths.sum())), 2)
    merchant_lengths = rng.integers(0, 6, n)
    merchants = MERCHANTS[rng.integers(0, len(MERCHANTS), int(merchant_lengths.sum()))]
    address = pa.StructArray.from_arrays(
        [
            pa.array(CITIES[rng.integers(0, len(CITIES), n)]),
            pa.array(rng.integers(1000, 99_999, n).astype(np.int32)),
        ],
        fields=list(_ADDRESS),
        mask=pa.array(rng.random(n) < 0.02),
    )
    newsletter = rng.random(n) < 0.4
    limit = rng.integers(1, 50, n) * 100
    language = rng.integers(0, len(LANGUAGES), n)
    preferences = [
        json.dumps(
            {
                "newsletter": bool(newsletter[i]),
                "daily_limit": int(limit[i]),
                "lang": LANGUAGES[language[i]],
            }
        )
        for i in range(n)
    ]
    columns = [
        pa.array(np.arange(n, dtype=np.int64) + ID_OFFSET),
        _stamp(event, n),
        _stamp(event + timedelta(minutes=5), n),
        pa.array(rng.poisson(3.0, n).astype(np.int64)),
        pa.array(spend, mask=spend_null),
        pa.array(SEGMENTS[rng.integers(0, len(SEGMENTS), n)]),
        pa.array(rng.random(n) < 0.8),
        pa.array(channel_fees, pa.string()),
        _lists(amount_lengths, pa.array(amounts)),
        _lists(merchant_lengths, pa.array(merchants)),
        address,
        pa.array(preferences, pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def write_complex_source(
    customers: int, days: int, start: datetime, seed: int, folder: Path
) -> list[Path]:
    """One parquet file per day (`part-YYYYMMDD.parquet`, written atomically) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for day in range(days):
        target = folder / f"part-{(start + timedelta(days=day)):%Y%m%d}.parquet"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # hidden from readers
        pq.write_table(day_table(customers, day, start, seed), tmp)
        os.replace(tmp, target)
        written.append(target)
    return written

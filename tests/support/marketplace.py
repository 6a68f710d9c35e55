"""Deterministic data for the marketplace test repository (tests/repos/marketplace).

Three frames from one seeded `numpy.random.Generator` and the caller's window (no wall clock):

- `seller_profile`: a snapshot per seller on most days, stamped at midnight UTC at the END of the
  day it describes, with a value of every Feast type and nulls on purpose in every nullable field.
- `seller_region_stats`: one row per (seller, region) pair on most days, same stamping.
- `orders`: label events during days 1..N-1. `is_cancelled ~ Bernoulli(sigmoid(logit))` where the
  logit rises with the pair's point-in-time `cancel_rate_7d` and for unverified sellers, so a
  model trained on the repo's features learns something; both classes occur on every day.

Both sources carry a few corrections: the same key and event time again, created an hour later,
with other values (Feast must serve the later `created`). The profile's rating is written under
its lake name `seller_rating` (the repo maps it to the feature `rating`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO_DIR = Path(__file__).resolve().parents[1] / "repos" / "marketplace"

PROFILE_SOURCE = "seller_profile"
REGION_SOURCE = "seller_region_stats"
ORDERS = "orders"
SOURCES: tuple[str, ...] = (PROFILE_SOURCE, REGION_SOURCE)

SELLER = "seller_id"
REGION = "region_id"
EVENT_TS = "event_timestamp"
CREATED = "created"
LABEL = "is_cancelled"

TIERS: tuple[str, ...] = ("gold", "silver", "bronze")
CATEGORIES: tuple[str, ...] = ("books", "toys", "garden", "kitchen", "sport", "music")
SHIPPING_OPTIONS: tuple[str, ...] = ("standard", "express", "pickup")
CITIES: tuple[str, ...] = ("Lyon", "Porto", "Ghent", "Leipzig", "Turin")

# The parquet layout of each file, column by column: the Feast type each one feeds is in the
# comment. Built by hand so that no inference (object -> string, int -> int64) changes a type.
_TS = pa.timestamp("us", tz="UTC")
PROFILE_SCHEMA = pa.schema(
    [
        pa.field(SELLER, pa.string(), nullable=False),
        pa.field(EVENT_TS, _TS, nullable=False),
        pa.field(CREATED, _TS, nullable=False),
        pa.field("is_verified", pa.bool_()),  # Bool
        pa.field("logo_thumbnail", pa.binary()),  # Bytes
        pa.field("joined_at", _TS),  # UnixTimestamp
        pa.field("rating_count", pa.int32()),  # Int32
        pa.field("seller_rating", pa.float32()),  # Float32, feature `rating`
        pa.field("lifetime_orders", pa.int64()),  # Int64
        pa.field("lifetime_gmv", pa.float64()),  # Float64
        pa.field("tier", pa.string()),  # String
        pa.field("recent_order_counts", pa.list_(pa.int64())),  # Array(Int64)
        pa.field("recent_ratings", pa.list_(pa.float64())),  # Array(Float64)
        pa.field("categories_sold", pa.list_(pa.string())),  # Array(String)
        pa.field("recent_on_time", pa.list_(pa.bool_())),  # Array(Bool)
        pa.field("shipping_fees", pa.string()),  # Map, as a JSON object
        pa.field("settings", pa.string()),  # Json
        pa.field("address", pa.struct([("city", pa.string()), ("zip", pa.int32())])),  # Struct
    ]
)
REGION_SCHEMA = pa.schema(
    [
        pa.field(SELLER, pa.string(), nullable=False),
        pa.field(REGION, pa.int64(), nullable=False),
        pa.field(EVENT_TS, _TS, nullable=False),
        pa.field(CREATED, _TS, nullable=False),
        pa.field("orders_7d", pa.int64()),  # Int64
        pa.field("cancel_rate_7d", pa.float64()),  # Float64
        pa.field("avg_delivery_hours", pa.float32()),  # Float32
    ]
)
ORDERS_SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.int64(), nullable=False),
        pa.field(SELLER, pa.string(), nullable=False),
        pa.field(REGION, pa.int64(), nullable=False),
        pa.field(EVENT_TS, _TS, nullable=False),
        pa.field("basket_value", pa.float64()),
        pa.field("item_count", pa.int64()),
        pa.field(LABEL, pa.int64()),
    ]
)
SCHEMAS: Mapping[str, pa.Schema] = {
    PROFILE_SOURCE: PROFILE_SCHEMA,
    REGION_SOURCE: REGION_SCHEMA,
    ORDERS: ORDERS_SCHEMA,
}

# Fields that may be null, per frame (never one the repo declares `contract:nullable: "false"`).
PROFILE_NULLABLE: tuple[str, ...] = (
    "logo_thumbnail",
    "joined_at",
    "rating_count",
    "seller_rating",
    "lifetime_gmv",
    "recent_order_counts",
    "recent_ratings",
    "categories_sold",
    "recent_on_time",
    "shipping_fees",
    "settings",
    "address",
)
REGION_NULLABLE: tuple[str, ...] = ("cancel_rate_7d", "avg_delivery_hours")

# What the repository declares about these sources (definitions.py), for expected values.
PROFILE_FIELD_MAPPING: Mapping[str, str] = {"seller_rating": "rating"}
REGION_TTL = timedelta(days=7)

# The label's known relationship to the features (logit of the cancellation probability).
LOGIT_INTERCEPT = -2.6
LOGIT_CANCEL_RATE = 6.0
LOGIT_UNVERIFIED = 1.5

# Independent random streams: a change to one frame never changes the numbers of another.
_STREAM_SELLERS = 1
_STREAM_PROFILE = 2
_STREAM_REGION = 3
_STREAM_ORDERS = 4
_STREAM_NULLS = 5
_STREAM_CORRECTIONS = 6
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class MarketplaceConfig:
    """Window, size and seed of one generated marketplace; `start` is an aware UTC midnight."""

    start: datetime
    days: int = 6
    n_sellers: int = 24
    n_regions: int = 4
    orders_per_day: int = 30
    seed: int = 23
    null_share: float = 0.12
    corrections: int = 4

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError(f"MarketplaceConfig.start = {self.start!r} must be timezone-aware.")
        start = self.start.astimezone(UTC)
        if start != start.replace(hour=0, minute=0, second=0, microsecond=0):
            raise ValueError(f"MarketplaceConfig.start = {start.isoformat()} must be midnight.")
        object.__setattr__(self, "start", start)
        if self.days < 2:
            raise ValueError(f"MarketplaceConfig.days = {self.days} must be >= 2 (labels: 1..N-1).")
        if self.n_sellers < 2 or self.n_regions < 1 or self.orders_per_day < 2:
            raise ValueError("MarketplaceConfig needs >= 2 sellers, >= 1 region, >= 2 orders/day.")
        if not 0.0 <= self.null_share < 1.0:
            raise ValueError(f"MarketplaceConfig.null_share = {self.null_share} must be in [0, 1).")

    @property
    def end(self) -> datetime:
        """The newest event time of the sources (midnight ending the last day)."""
        return self.start + timedelta(days=self.days)

    @property
    def seller_ids(self) -> list[str]:
        """Every seller's id, in order."""
        return [f"S{i:04d}" for i in range(1, self.n_sellers + 1)]

    def rng(self, stream: int) -> np.random.Generator:
        """The random stream `stream` of this seed."""
        return np.random.default_rng([self.seed, stream])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _day_end(config: MarketplaceConfig, day: int) -> pd.Timestamp:
    return pd.Timestamp(config.start + timedelta(days=day + 1))


def _sellers(config: MarketplaceConfig) -> pd.DataFrame:
    """Static traits of each seller, the latent truth behind its snapshots."""
    rng = config.rng(_STREAM_SELLERS)
    n = config.n_sellers
    verified = rng.random(n) < 0.6
    verified[:2] = [True, False]  # both kinds always exist, whatever the seed
    return pd.DataFrame(
        {
            SELLER: config.seller_ids,
            "verified": verified,
            "tier": rng.choice(TIERS, size=n, p=[0.2, 0.5, 0.3]),
            "base_rating": rng.uniform(2.5, 4.9, size=n),
            "base_count": rng.integers(0, 400, size=n),
            "base_orders": rng.integers(10, 5000, size=n),
            "joined_days_ago": rng.integers(30, 2000, size=n),
            "city": rng.choice(CITIES, size=n),
            "zip": rng.integers(1000, 99999, size=n),
            "regions": [
                sorted(rng.choice(config.n_regions, size=min(2, config.n_regions), replace=False))
                for _ in range(n)
            ],
            "risk": rng.beta(2.0, 12.0, size=n),
        }
    )


def _profile_row(
    seller: pd.Series, day: int, config: MarketplaceConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """One day's snapshot of one seller, every field filled."""
    index = int(seller[SELLER][1:])
    # Counts only grow: each seller gains a fixed number of ratings and orders per day.
    count = int(seller["base_count"]) + day * (index % 7)
    categories = sorted(rng.choice(CATEGORIES, size=int(rng.integers(1, 4)), replace=False))
    fees = {option: round(float(rng.uniform(0.0, 12.0)), 2) for option in SHIPPING_OPTIONS[:2]}
    return {
        "is_verified": bool(seller["verified"]),
        "logo_thumbnail": _PNG_MAGIC + bytes([index % 256, day % 256]),
        "joined_at": pd.Timestamp(config.start - timedelta(days=int(seller["joined_days_ago"]))),
        "rating_count": count,
        "seller_rating": float(np.clip(seller["base_rating"] + rng.normal(0, 0.15), 1.0, 5.0)),
        "lifetime_orders": int(seller["base_orders"]) + day * (5 + index % 30),
        "lifetime_gmv": round(float(seller["base_orders"]) * float(rng.uniform(20, 60)), 2),
        "tier": str(seller["tier"]),
        "recent_order_counts": [int(v) for v in rng.integers(0, 30, size=3)],
        "recent_ratings": [round(float(v), 1) for v in rng.uniform(1, 5, size=3)],
        "categories_sold": [str(c) for c in categories],
        "recent_on_time": [bool(v) for v in rng.random(3) < 0.85],
        "shipping_fees": json.dumps(fees),
        "settings": json.dumps({"vacation": bool(rng.random() < 0.1), "lang": "en", "day": day}),
        "address": {"city": str(seller["city"]), "zip": int(seller["zip"])},
    }


def _null_out(frame: pd.DataFrame, columns: tuple[str, ...], config: MarketplaceConfig) -> None:
    """Blank `null_share` of the rows of each column (NaN for floats, None otherwise), in place."""
    rng = config.rng(_STREAM_NULLS)
    for column in columns:
        mask = rng.random(len(frame)) < config.null_share
        mask[rng.integers(len(frame))] = True  # at least one null per nullable column
        if pd.api.types.is_float_dtype(frame[column]):
            frame.loc[mask, column] = np.nan
        elif pd.api.types.is_integer_dtype(frame[column]) or isinstance(
            frame[column].dtype, pd.DatetimeTZDtype
        ):
            frame.loc[mask, column] = pd.NA
        else:
            frame[column] = frame[column].astype(object)
            frame.loc[mask, column] = None


def generate_profile(config: MarketplaceConfig) -> pd.DataFrame:
    """Seller snapshots: every seller on day 0, then each on ~75% of days; nulls and corrections."""
    sellers = _sellers(config)
    rng = config.rng(_STREAM_PROFILE)
    rows: list[dict[str, Any]] = []
    for day in range(config.days):
        stamp = _day_end(config, day)
        present = rng.random(len(sellers)) < 0.75
        for position, seller in sellers.iterrows():
            if day == 0 or present[position]:
                row = {SELLER: seller[SELLER], EVENT_TS: stamp, CREATED: stamp}
                rows.append(row | _profile_row(seller, day, config, rng))
    frame = pd.DataFrame(rows)
    frame["rating_count"] = frame["rating_count"].astype("Int32")
    frame["seller_rating"] = frame["seller_rating"].astype("float32")
    frame["lifetime_orders"] = frame["lifetime_orders"].astype("int64")
    for column in (EVENT_TS, CREATED, "joined_at"):
        frame[column] = frame[column].astype("datetime64[us, UTC]")
    _null_out(frame, PROFILE_NULLABLE, config)
    corrected = _corrections(frame, config, {"seller_rating": 1.0, "tier": "gold"})
    return _ordered(pd.concat([frame, corrected], ignore_index=True), PROFILE_SCHEMA)


def generate_region_stats(config: MarketplaceConfig) -> pd.DataFrame:
    """Seller x region weekly statistics: every pair on day 0, then on ~80% of days."""
    sellers = _sellers(config)
    rng = config.rng(_STREAM_REGION)
    rows: list[dict[str, Any]] = []
    for day in range(config.days):
        stamp = _day_end(config, day)
        for _, seller in sellers.iterrows():
            for region in seller["regions"]:
                if day > 0 and rng.random() >= 0.8:
                    continue
                rate = float(np.clip(seller["risk"] + rng.normal(0, 0.04), 0.0, 1.0))
                rows.append(
                    {
                        SELLER: seller[SELLER],
                        REGION: int(region) + 1,
                        EVENT_TS: stamp,
                        CREATED: stamp,
                        "orders_7d": int(rng.integers(0, 120)),
                        "cancel_rate_7d": round(rate, 4),
                        "avg_delivery_hours": float(rng.uniform(12, 96)),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["avg_delivery_hours"] = frame["avg_delivery_hours"].astype("float32")
    for column in (EVENT_TS, CREATED):
        frame[column] = frame[column].astype("datetime64[us, UTC]")
    _null_out(frame, REGION_NULLABLE, config)
    corrected = _corrections(frame, config, {"orders_7d": 999, "cancel_rate_7d": 0.5})
    return _ordered(pd.concat([frame, corrected], ignore_index=True), REGION_SCHEMA)


def _corrections(
    frame: pd.DataFrame, config: MarketplaceConfig, values: Mapping[str, Any]
) -> pd.DataFrame:
    """Copies of a few of the newest rows, created an hour later with `values` instead."""
    rng = config.rng(_STREAM_CORRECTIONS)
    newest = frame.index[frame[EVENT_TS] == frame[EVENT_TS].max()]
    picked = rng.choice(newest, size=min(config.corrections, len(newest)), replace=False)
    corrected = frame.loc[np.sort(picked)].copy()
    corrected[CREATED] = corrected[CREATED] + pd.Timedelta(hours=1)
    for column, value in values.items():
        corrected.loc[:, column] = value  # keeps the column's dtype (float32 stays float32)
    return corrected


def latest_rows(source: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The row each key's online value comes from: newest event time, then newest `created`."""
    ordered = source.sort_values([*keys, EVENT_TS, CREATED], kind="stable")
    return ordered.drop_duplicates(keys, keep="last").reset_index(drop=True)


def point_in_time(
    events: pd.DataFrame,
    source: pd.DataFrame,
    keys: list[str],
    *,
    ttl: timedelta | None = None,
) -> pd.DataFrame:
    """Each event (in its order) with the source's newest row at or before its time and within
    `ttl`; a later `created` wins a tie. Source columns are null where no row qualifies."""
    latest = source.sort_values([*keys, EVENT_TS, CREATED], kind="stable")
    latest = latest.drop_duplicates([*keys, EVENT_TS], keep="last").drop(columns=[CREATED])
    latest = latest.rename(columns={EVENT_TS: "_feature_ts"}).sort_values("_feature_ts")
    merged = pd.merge_asof(
        events.reset_index(drop=True).reset_index(names="_row").sort_values(EVENT_TS),
        latest,
        left_on=EVENT_TS,
        right_on="_feature_ts",
        by=keys,
        direction="backward",
        tolerance=pd.Timedelta(ttl) if ttl else None,
    )
    return merged.sort_values("_row").drop(columns=["_row", "_feature_ts"]).reset_index(drop=True)


def generate_orders(
    config: MarketplaceConfig, profile: pd.DataFrame, region_stats: pd.DataFrame
) -> pd.DataFrame:
    """Orders on days 1..N-1 with a cancellation label driven by the point-in-time features."""
    sellers = _sellers(config)
    pairs = [
        (s, int(r) + 1)
        for s, regions in zip(sellers[SELLER], sellers["regions"], strict=True)
        for r in regions
    ]
    rng = config.rng(_STREAM_ORDERS)
    n = config.orders_per_day * (config.days - 1)
    chosen = rng.integers(len(pairs), size=n)
    day = np.repeat(np.arange(1, config.days), config.orders_per_day)
    # Whole seconds strictly inside the day: no order sits on a feature's midnight stamp.
    seconds = rng.integers(60, 86_340, size=n)
    times = [
        pd.Timestamp(config.start + timedelta(days=int(d), seconds=int(s)))
        for d, s in zip(day, seconds, strict=True)
    ]
    items = rng.integers(1, 8, size=n)
    orders = pd.DataFrame(
        {
            "order_id": np.arange(1, n + 1, dtype="int64"),
            SELLER: [pairs[i][0] for i in chosen],
            REGION: np.array([pairs[i][1] for i in chosen], dtype="int64"),
            EVENT_TS: pd.Series(times).astype("datetime64[us, UTC]"),
            "basket_value": np.round(items * rng.uniform(5, 60, size=n), 2),
            "item_count": items.astype("int64"),
        }
    )
    rate = point_in_time(orders, region_stats, [SELLER, REGION], ttl=REGION_TTL)["cancel_rate_7d"]
    verified = point_in_time(orders, profile, [SELLER])["is_verified"]
    logit = (
        LOGIT_INTERCEPT
        + LOGIT_CANCEL_RATE * rate.fillna(rate.mean()).to_numpy(dtype="float64")
        + LOGIT_UNVERIFIED * (~verified.astype(bool)).to_numpy(dtype="float64")
    )
    probability = _sigmoid(logit)
    label = (rng.random(n) < probability).astype("int64")
    orders["is_cancelled"] = _both_classes_per_day(label, probability, day)
    return _ordered(orders, ORDERS_SCHEMA)


def _both_classes_per_day(
    label: np.ndarray, probability: np.ndarray, day: np.ndarray
) -> np.ndarray:
    """Flip the most likely (or least likely) order of a one-class day so both classes occur."""
    label = label.copy()
    for value in np.unique(day):
        rows = np.flatnonzero(day == value)
        if label[rows].min() == 1:
            label[rows[np.argmin(probability[rows])]] = 0
        if label[rows].max() == 0:
            label[rows[np.argmax(probability[rows])]] = 1
    return label


def _ordered(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """The frame's columns in the schema's order, times in µs UTC, rows by key and time."""
    frame = frame[schema.names].copy()
    for column in (EVENT_TS, CREATED):
        if column in frame.columns:
            frame[column] = frame[column].astype("datetime64[us, UTC]")
    if "order_id" in frame.columns:
        sort = ["order_id"]
    else:
        sort = [c for c in (SELLER, REGION, EVENT_TS, CREATED) if c in frame.columns]
    return frame.sort_values(sort, kind="stable").reset_index(drop=True)


def generate_marketplace(config: MarketplaceConfig) -> dict[str, pd.DataFrame]:
    """The two view sources and the labelled orders, keyed by their folder name under data/."""
    profile = generate_profile(config)
    region_stats = generate_region_stats(config)
    return {
        PROFILE_SOURCE: profile,
        REGION_SOURCE: region_stats,
        ORDERS: generate_orders(config, profile, region_stats),
    }


def to_arrow(frame: pd.DataFrame, name: str) -> pa.Table:
    """The frame as an Arrow table of the exact schema of source `name`."""
    return pa.Table.from_pandas(frame, schema=SCHEMAS[name], preserve_index=False)


def write_marketplace(frames: Mapping[str, pd.DataFrame], repo_copy: Path) -> dict[str, Path]:
    """Write each frame as one parquet file per event day under `<repo_copy>/data/<name>/`."""
    folders: dict[str, Path] = {}
    for name, frame in frames.items():
        folder = Path(repo_copy) / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        days = frame[EVENT_TS].dt.strftime("%Y-%m-%d")
        for day, part in frame.groupby(days, sort=True):
            pq.write_table(to_arrow(part, name), folder / f"{name}-{day}.parquet")
        folders[name] = folder
    return folders


def copy_repo(dest: Path) -> Path:
    """A fresh copy of the marketplace repository at `dest` (which must not exist yet)."""
    dest = Path(dest)
    shutil.copytree(REPO_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "data"))
    return dest

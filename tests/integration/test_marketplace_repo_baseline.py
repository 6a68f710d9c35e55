"""Feast's own path on the marketplace repo (tests/repos/marketplace): the baseline to match.

`feast apply` (the CLI, in a subprocess, as a user runs it), then `FeatureStore.materialize`,
then online and historical reads. What comes back here is what Feast itself does with a repo
unlike the demo: every value type, a composite key behind a push source, a field mapping, a
python-mode and a pandas-mode on-demand view, projected feature services, corrections and nulls.
The platform's own engines must give the same answers on the same repo.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore, FileSource, PushSource, ValueType
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

from tests.support.marketplace import (
    CREATED,
    EVENT_TS,
    LABEL,
    ORDERS,
    PROFILE_FIELD_MAPPING,
    PROFILE_SOURCE,
    REGION,
    REGION_SOURCE,
    REGION_TTL,
    SELLER,
    MarketplaceConfig,
    copy_repo,
    generate_marketplace,
    latest_rows,
    point_in_time,
    write_marketplace,
)

pytestmark = pytest.mark.integration

# A fixed Monday: the data are the same whatever day the test runs.
CONFIG = MarketplaceConfig(start=datetime(2026, 3, 2, tzinfo=UTC))
FEAST = Path(sys.executable).with_name("feast")

PROFILE_TYPES = {
    "is_verified": Bool,
    "logo_thumbnail": Bytes,
    "joined_at": UnixTimestamp,
    "rating_count": Int32,
    "rating": Float32,
    "lifetime_orders": Int64,
    "lifetime_gmv": Float64,
    "tier": String,
    "recent_order_counts": Array(Int64),
    "recent_ratings": Array(Float64),
    "categories_sold": Array(String),
    "recent_on_time": Array(Bool),
    "shipping_fees": Map,
    "settings": Json,
    "address": Struct({"city": String, "zip": Int32}),
}
REGION_FEATURES = ("orders_7d", "cancel_rate_7d", "avg_delivery_hours")
V1_PROFILE = ("is_verified", "rating", "rating_count", "tier")
ODFV_PYTHON = ("basket_per_item", "cancel_risk_x_basket")


@dataclass
class Marketplace:
    """An applied and materialized copy of the marketplace repo, with the data written into it."""

    repo: Path
    store: FeatureStore
    frames: dict[str, pd.DataFrame]

    @property
    def profile(self) -> pd.DataFrame:
        """The profile source under feature names (the repo maps seller_rating to rating)."""
        return self.frames[PROFILE_SOURCE].rename(columns=PROFILE_FIELD_MAPPING)


def _feast_apply(repo: Path, tmp: Path) -> None:
    """`feast -c <repo> apply`, as a user runs it; the output is in the failure message."""
    env = {**os.environ, "TMPDIR": str(tmp), "FEAST_USAGE": "False"}
    result = subprocess.run(
        [str(FEAST), "-c", str(repo), "apply"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"feast apply failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def marketplace(tmp_path_factory: pytest.TempPathFactory) -> Marketplace:
    """The repo copied into a temp dir, data generated and written, applied and materialized."""
    root = tmp_path_factory.mktemp("marketplace")
    repo = copy_repo(root / "repo")
    frames = generate_marketplace(CONFIG)
    write_marketplace(frames, repo)
    (root / "tmp").mkdir()
    _feast_apply(repo, root / "tmp")
    store = FeatureStore(repo_path=str(repo))
    store.materialize(CONFIG.start, CONFIG.end + timedelta(days=1))
    return Marketplace(repo=repo, store=store, frames=frames)


def _missing(value: Any) -> bool:
    """None, NaN, NaT or pd.NA."""
    return value is None or (not isinstance(value, list | dict | bytes) and bool(pd.isna(value)))


def _as_float32(value: Any) -> float:
    return float(np.float32(value))


# Expected online value of a source cell, per Feast type (None stays None).
_ONLINE: dict[str, Callable[[Any], Any]] = {
    "is_verified": bool,
    "logo_thumbnail": bytes,
    "joined_at": lambda v: pd.Timestamp(v).to_pydatetime(),
    "rating_count": int,
    "rating": _as_float32,
    "lifetime_orders": int,
    "lifetime_gmv": float,
    "tier": str,
    "recent_order_counts": lambda v: [int(x) for x in v],
    "recent_ratings": lambda v: [float(x) for x in v],
    "categories_sold": lambda v: [str(x) for x in v],
    "recent_on_time": lambda v: [bool(x) for x in v],
    "shipping_fees": json.loads,
    "settings": json.loads,
    "address": dict,
}
# The Python type each field comes back as from get_online_features.
_ONLINE_TYPES: dict[str, type] = {
    "is_verified": bool,
    "logo_thumbnail": bytes,
    "joined_at": datetime,
    "rating_count": int,
    "rating": float,
    "lifetime_orders": int,
    "lifetime_gmv": float,
    "tier": str,
    "recent_order_counts": list,
    "recent_ratings": list,
    "categories_sold": list,
    "recent_on_time": list,
    "shipping_fees": dict,
    "settings": dict,
    "address": dict,
}


def _expected_online(cell: Any, field: str) -> Any:
    return None if _missing(cell) else _ONLINE[field](cell)


def test_generated_data_honour_the_repo_contracts(marketplace: Marketplace) -> None:
    """The generator is deterministic, keeps every declared contract and plants nulls elsewhere."""
    again = generate_marketplace(CONFIG)
    for name, frame in marketplace.frames.items():
        pd.testing.assert_frame_equal(frame, again[name])
    sources = {
        "seller_profile_fv": marketplace.profile,
        "seller_region_stats_fv": marketplace.frames[REGION_SOURCE],
    }
    for view_name, frame in sources.items():
        for field in marketplace.store.get_feature_view(view_name).features:
            column, tags = frame[field.name], field.tags
            nulls = int(column.map(_missing).sum())
            if tags.get("contract:nullable") == "false":
                assert nulls == 0, f"{view_name}.{field.name} must never be null"
            else:
                assert nulls > 0, f"{view_name}.{field.name} should carry planted nulls"
            values = column[~column.map(_missing)]
            if "contract:min" in tags:
                assert values.astype(float).min() >= float(tags["contract:min"]), field.name
            if "contract:max" in tags:
                assert values.astype(float).max() <= float(tags["contract:max"]), field.name
            if "contract:categories" in tags:
                assert set(values) <= set(json.loads(tags["contract:categories"])), field.name
    orders = marketplace.frames[ORDERS]
    per_day = orders.groupby(orders[EVENT_TS].dt.date)[LABEL].agg(["min", "max"])
    assert (per_day["min"] == 0).all()
    assert (per_day["max"] == 1).all()
    # Corrections exist: the same key and event time twice, the later `created` differing.
    keys = {"seller_profile_fv": [SELLER], "seller_region_stats_fv": [SELLER, REGION]}
    for view_name, frame in sources.items():
        assert frame.duplicated([*keys[view_name], EVENT_TS]).sum() == CONFIG.corrections


def test_every_object_is_registered_as_declared(marketplace: Marketplace) -> None:
    """Views, on-demand views, services, entities, sources, types and contract tags."""
    store = marketplace.store
    assert {v.name for v in store.list_feature_views()} == {
        "seller_profile_fv",
        "seller_region_stats_fv",
    }
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    assert {name: v.mode for name, v in odfvs.items()} == {
        "order_features": "python",
        "seller_profile_derived": "pandas",
    }
    services = {s.name: s for s in store.list_feature_services()}
    assert set(services) == {"order_model_v1", "order_model_v2", "seller_everything"}
    projections = services["order_model_v1"].feature_view_projections
    v1 = {p.name: [f.name for f in p.features] for p in projections}
    assert v1 == {
        "seller_profile_fv": list(V1_PROFILE),
        "seller_region_stats_fv": list(REGION_FEATURES),
        "order_features": list(ODFV_PYTHON),
    }
    v2 = [p.name for p in services["order_model_v2"].feature_view_projections]
    assert v2 == [*v1, "seller_profile_derived"]

    entities = {e.name: (e.join_key, e.value_type) for e in store.list_entities()}
    assert entities == {"seller": (SELLER, ValueType.STRING), "region": (REGION, ValueType.INT64)}

    profile = store.get_feature_view("seller_profile_fv")
    assert profile.ttl == timedelta(0)
    assert {f.name: f.dtype for f in profile.features} == PROFILE_TYPES
    assert isinstance(profile.batch_source, FileSource)
    assert profile.batch_source.path == "data/seller_profile"
    assert profile.batch_source.field_mapping == dict(PROFILE_FIELD_MAPPING)
    assert profile.batch_source.created_timestamp_column == CREATED
    tags = {f.name: f.tags for f in profile.features}
    assert json.loads(tags["tier"]["contract:categories"]) == ["gold", "silver", "bronze"]
    assert tags["rating"] == {"contract:min": "1", "contract:max": "5"}
    required = {name for name, t in tags.items() if t.get("contract:nullable") == "false"}
    assert required == {"is_verified", "lifetime_orders", "tier"}

    stats = store.get_feature_view("seller_region_stats_fv")
    assert stats.ttl == REGION_TTL
    assert sorted(stats.join_keys) == [REGION, SELLER]
    assert isinstance(stats.stream_source, PushSource)
    assert stats.stream_source.name == "seller_region_push"
    assert stats.batch_source.name == "seller_region_stats_source"
    assert stats.batch_source.path == "data/seller_region_stats"
    assert {f.name: f.tags.get("contract:max") for f in stats.features} == {
        "orders_7d": "1e6",
        "cancel_rate_7d": "1",
        "avg_delivery_hours": "720",
    }
    sources = {s.name: type(s).__name__ for s in store.list_data_sources()}
    assert sources == {
        "seller_profile_source": "FileSource",
        "seller_region_stats_source": "FileSource",
        "seller_region_push": "PushSource",
        "order_request": "RequestSource",
    }


def test_online_values_of_every_type(marketplace: Marketplace) -> None:
    """Every seller's materialized profile is its newest row (corrections win), typed per field."""
    store = marketplace.store
    expected = latest_rows(marketplace.profile, [SELLER]).set_index(SELLER)
    online = store.get_online_features(
        features=store.get_feature_service("seller_everything"),
        entity_rows=[{SELLER: seller} for seller in expected.index],
    ).to_dict()
    assert online[SELLER] == list(expected.index)
    for field in PROFILE_TYPES:
        want = [_expected_online(cell, field) for cell in expected[field]]
        got = online[field]
        present = [g for g in got if g is not None]
        assert present, f"{field}: no value came back"
        assert all(isinstance(g, _ONLINE_TYPES[field]) for g in present), field
        assert [g is None for g in got] == [w is None for w in want], field
        if field == "address":
            # Int32 inside a struct comes back as a float: the file offline store reads the
            # parquet through pandas, and a struct column with a null row turns int children
            # into float64. Same number, other Python type.
            assert all(isinstance(g["zip"], float) for g in present)
            got = [None if g is None else {"city": g["city"], "zip": int(g["zip"])} for g in got]
        assert got == want, field
    assert all(t.tzinfo is not None for t in online["joined_at"] if t is not None)
    corrected = expected.index[expected[CREATED] > expected[EVENT_TS]]
    assert len(corrected) > 0
    for seller in corrected:
        i = online[SELLER].index(seller)
        assert (online["rating"][i], online["tier"][i]) == (1.0, "gold")


def _order_rows(marketplace: Marketplace, count: int) -> pd.DataFrame:
    """Request rows for the newest stats of `count` (seller, region) pairs, with their values."""
    keys = [SELLER, REGION]
    stats = latest_rows(marketplace.frames[REGION_SOURCE], keys).head(count)
    profile = latest_rows(marketplace.profile, [SELLER])
    rows = stats.merge(profile, on=SELLER, suffixes=("", "_profile"))
    rows["basket_value"] = np.linspace(10.0, 200.0, len(rows)).round(2)
    rows["item_count"] = np.arange(len(rows)) % 5 + 1
    return rows


@pytest.mark.parametrize("service", ["order_model_v1", "order_model_v2", "seller_everything"])
def test_online_features_per_service(marketplace: Marketplace, service: str) -> None:
    """Each service answers online, the python and pandas on-demand views computed per row."""
    store = marketplace.store
    rows = _order_rows(marketplace, 12)
    entity_rows = [
        {
            SELLER: r[SELLER],
            REGION: int(r[REGION]),
            "basket_value": float(r["basket_value"]),
            "item_count": int(r["item_count"]),
        }
        for _, r in rows.iterrows()
    ]
    if service == "seller_everything":
        entity_rows = [{SELLER: r[SELLER]} for r in entity_rows]
    online = store.get_online_features(
        features=store.get_feature_service(service), entity_rows=entity_rows
    ).to_dict()
    if service == "seller_everything":
        assert set(online) == {SELLER, *PROFILE_TYPES}
        assert online["tier"] == list(rows["tier"])
        return
    for field in (*V1_PROFILE, *REGION_FEATURES):
        assert online[field] == [_expected_model_value(v, field) for v in rows[field]], field
    basket, items, rate = rows["basket_value"], rows["item_count"], rows["cancel_rate_7d"]
    assert online["basket_per_item"] == pytest.approx(list(basket / items))
    risk = [None if math.isnan(r) else b * r for b, r in zip(basket, rate, strict=True)]
    assert [v is None for v in online["cancel_risk_x_basket"]] == [v is None for v in risk]
    assert [v for v in online["cancel_risk_x_basket"] if v is not None] == pytest.approx(
        [v for v in risk if v is not None]
    )
    if service == "order_model_v2":
        reputation = rows["rating"].astype(float) * np.log1p(rows["rating_count"].astype(float))
        got = np.array([np.nan if v is None else v for v in online["reputation"]], dtype=float)
        np.testing.assert_allclose(got, reputation.to_numpy(dtype=float, na_value=np.nan))
    else:
        assert "reputation" not in online


def _expected_model_value(cell: Any, field: str) -> Any:
    if _missing(cell):
        return None
    if field in _ONLINE:
        return _ONLINE[field](cell)
    if field == "avg_delivery_hours":
        return _as_float32(cell)
    return cell.item() if isinstance(cell, np.generic) else cell


def test_historical_order_model_v1_is_point_in_time(marketplace: Marketplace) -> None:
    """Every order comes back once, with the values in force at its time (rows reordered)."""
    store = marketplace.store
    orders = marketplace.frames[ORDERS]
    entity_df = orders[["order_id", SELLER, REGION, EVENT_TS, "basket_value", "item_count"]]
    training = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service("order_model_v1")
    ).to_df()
    assert len(training) == len(orders)
    training = training.sort_values("order_id").reset_index(drop=True)
    expected = point_in_time(
        entity_df, marketplace.frames[REGION_SOURCE], [SELLER, REGION], ttl=REGION_TTL
    )
    profile = point_in_time(entity_df, marketplace.profile, [SELLER])
    expected = expected.assign(**{f: profile[f] for f in V1_PROFILE})
    expected["basket_per_item"] = expected["basket_value"] / expected["item_count"]
    expected["cancel_risk_x_basket"] = expected["basket_value"] * expected["cancel_rate_7d"]
    # Offline types: Int32 stays pandas Int32, Float32 stays float32, timestamps stay UTC.
    assert str(training["rating_count"].dtype) == "Int32"
    assert str(training["rating"].dtype) == "float32"
    assert str(training["avg_delivery_hours"].dtype) == "float32"
    assert str(training[EVENT_TS].dtype).endswith("UTC]")
    columns = ["order_id", *V1_PROFILE, *REGION_FEATURES, *ODFV_PYTHON]
    pd.testing.assert_frame_equal(
        training[columns], expected[columns], check_dtype=False, check_exact=False
    )
    # The planted nulls reach the training set as nulls, not as zeros.
    assert training["cancel_rate_7d"].isna().any()
    assert training["rating_count"].isna().any()

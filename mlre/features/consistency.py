"""Online/offline consistency: do the online values equal the point-in-time offline values?

For a seeded sample of entity keys, online values are read straight from the online store (with
their event timestamps) and offline values through Feast's own point-in-time retrieval at the
materialization watermark, an independent code path from the one that wrote the online store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from feast import FeatureStore, FeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

from mlre.errors import FeatureStoreError
from mlre.features.materialize import (
    ViewSpec,
    connect_duckdb,
    quote_identifier,
    register_source,
)
from mlre.features.sources import kind_of

EVENT_TS = "__online_event_ts"
# Kinds compared column-wise as they are; every other kind value by value, in canonical form.
_SCALAR_KINDS = frozenset({"int", "float", "string", "bool"})


@dataclass(frozen=True)
class FeatureConsistency:
    """Per-feature result: keys compared (stale ones excluded), how many disagreed, and how."""

    feature_view: str
    feature: str
    compared: int
    mismatches: int
    missing_online: int
    unexpected_online: int
    stale: int
    example_keys: tuple[Any, ...]

    @property
    def bad(self) -> int:
        """Keys whose online value is wrong or absent (stale keys are reported, not counted)."""
        return self.mismatches + self.missing_online + self.unexpected_online

    @property
    def mismatch_rate(self) -> float:
        return self.bad / self.compared if self.compared else 0.0


@dataclass(frozen=True)
class ConsistencyReport:
    """The comparison for one feature view at its watermark."""

    feature_view: str
    watermark: datetime
    sampled: int
    features: list[FeatureConsistency]
    mismatched_keys: dict[str, list[Any]] = field(default_factory=dict)
    missing_keys: list[Any] = field(default_factory=list)
    stale_keys: list[Any] = field(default_factory=list)
    bad_keys: list[Any] = field(default_factory=list)
    compared_keys: int = 0


@dataclass(frozen=True)
class ConsistencyDecision:
    """Consistent or not, with the reasons a person needs to act."""

    consistent: bool
    mismatch_rate: float
    threshold: float
    reasons: list[str]


def sample_keys(spec: ViewSpec, watermark: datetime, size: int, seed: int) -> pd.DataFrame:
    """A seeded sample of the entity keys that have any source row at or before the watermark."""
    if size <= 0:
        raise FeatureStoreError(
            f"Parameter sample_size={size} must be positive; pass sample_size >= 1 "
            "(entity keys sampled per view)."
        )
    keys = ", ".join(quote_identifier(k) for k in spec.join_keys)
    connection = connect_duckdb(512, 2, None)
    try:
        register_source(connection, spec.source_uri)
        ts = quote_identifier(spec.timestamp_field)
        sql = f"SELECT DISTINCT {keys} FROM source WHERE {ts} <= $wm"
        frame = connection.execute(sql, {"wm": watermark}).df()
    finally:
        connection.close()
    if len(frame) > size:
        frame = frame.sample(n=size, random_state=seed)
    return frame.sort_values(list(spec.join_keys)).reset_index(drop=True)


def _entity_key(
    join_keys: list[str], row: tuple[Any, ...], types: dict[str, Any]
) -> EntityKeyProto:
    values = [
        python_values_to_proto_values([value], types[k])[0]
        for k, value in zip(join_keys, row, strict=True)
    ]
    return EntityKeyProto(join_keys=join_keys, entity_values=values)


def _python_value(proto: Any) -> Any:
    if proto is None or proto.WhichOneof("val") is None:
        return None
    return feast_value_type_to_python_type(proto)


def read_online(store: FeatureStore, feature_view: FeatureView, keys: pd.DataFrame) -> pd.DataFrame:
    """Online values and event timestamps for the keys; absent keys come back as NaN rows."""
    join_keys = list(feature_view.join_keys)
    types = {e.name: e.dtype.to_value_type() for e in feature_view.entity_columns}
    protos = [
        _entity_key(join_keys, tuple(row), types) for row in keys[join_keys].itertuples(index=False)
    ]
    features = [f.name for f in feature_view.features]
    rows = store._get_provider().online_read(
        config=store.config, table=feature_view, entity_keys=protos, requested_features=features
    )
    records = []
    for event_ts, values in rows:
        record: dict[str, Any] = {
            name: _python_value((values or {}).get(name)) for name in features
        }
        # Redis answers an absent key with empty values and a 1970 timestamp: treat it as absent.
        present = any(value is not None for value in record.values())
        record[EVENT_TS] = event_ts if present else None
        records.append(record)
    online = pd.DataFrame.from_records(records, columns=[EVENT_TS, *features])
    online[EVENT_TS] = pd.to_datetime(online[EVENT_TS], utc=True)
    return pd.concat([keys[join_keys].reset_index(drop=True), online], axis=1)


def read_offline(
    store: FeatureStore, feature_view: FeatureView, keys: pd.DataFrame, watermark: datetime
) -> pd.DataFrame:
    """Point-in-time offline values at the watermark via Feast (rows it drops are absent keys).

    Exact but slow on large sources: Feast's file store reads the whole source to join (~20 s at
    5M rows). `read_offline_duckdb` gives the same answer from the TTL window alone.
    """
    join_keys = list(feature_view.join_keys)
    entity_df = keys[join_keys].copy()
    entity_df["event_timestamp"] = pd.Timestamp(watermark)
    refs = [f"{feature_view.name}:{f.name}" for f in feature_view.features]
    offline = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    return offline.drop(columns=["event_timestamp"]).drop_duplicates(join_keys)


def point_in_time_sql(spec: ViewSpec, with_ttl: bool) -> str:
    """SQL for Feast's point-in-time rule at one instant: the newest row at or before the
    watermark and (with a ttl) not older than watermark - ttl, ties broken by `created`."""
    q = quote_identifier
    keys = ", ".join(q(k) for k in spec.join_keys)
    ts = q(spec.timestamp_field)
    order = f"{ts} DESC" + (
        f", {q(spec.created_field)} DESC NULLS LAST" if spec.created_field else ""
    )
    columns = ", ".join(f"{q(col)} AS {q(feat)}" for col, feat in spec.columns)
    where = f"{ts} <= $wm" + (f" AND {ts} >= $oldest" if with_ttl else "")
    return (
        f"SELECT {keys}, {columns} FROM source SEMI JOIN sample USING ({keys}) WHERE {where} "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1"
    )


def read_offline_duckdb(
    spec: ViewSpec, keys: pd.DataFrame, watermark: datetime, ttl: timedelta | None
) -> pd.DataFrame:
    """Point-in-time offline values at the watermark, read with DuckDB from the TTL window only."""
    connection = connect_duckdb(512, 2, None)
    try:
        register_source(connection, spec.source_uri)
        connection.register("sample", keys[list(spec.join_keys)])
        params: dict[str, Any] = {"wm": watermark}
        if ttl:
            params["oldest"] = watermark - ttl
        return connection.execute(point_in_time_sql(spec, bool(ttl)), params).df()
    finally:
        connection.close()


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def canonical(value: Any, kind: str) -> Any:
    """One comparable form of a feature value, whichever side read it: the online store gives
    Feast's Python values (parsed JSON, dicts, lists, datetimes at whole seconds), the offline
    side the source's (JSON text, Arrow maps as pairs, numpy arrays, microsecond timestamps)."""
    if _is_missing(value):
        return None
    if kind in ("json", "map") and isinstance(value, str | bytes):
        value = json.loads(value)
    if kind == "map" and isinstance(value, list | tuple | np.ndarray):
        value = dict(value)  # an Arrow map read as (key, value) pairs
    if kind == "timestamp":
        return int(pd.Timestamp(value).timestamp())  # Feast keeps whole seconds online
    if kind == "bytes":
        return bytes(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    """Nested values as dicts, lists and floats (a struct's int may come back as a float)."""
    if _is_missing(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.number):
        return float(value)
    return value


def _same(a: Any, b: Any, tolerance: float) -> bool:
    """Equal canonical values; floats within tolerance at any depth."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _values_equal(
    online: pd.Series, offline: pd.Series, tolerance: float, kind: str | None = None
) -> np.ndarray:
    """Element-wise equality; numbers within tolerance, missing equals missing."""
    if kind is not None and kind not in _SCALAR_KINDS:
        pairs = zip(online.tolist(), offline.tolist(), strict=True)
        return np.array(
            [_same(canonical(a, kind), canonical(b, kind), tolerance) for a, b in pairs],
            dtype=bool,
        )
    both_missing = online.isna().to_numpy() & offline.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(offline) and not pd.api.types.is_bool_dtype(offline):
        a = pd.to_numeric(online, errors="coerce").to_numpy(dtype="float64")
        b = offline.to_numpy(dtype="float64")
        close = np.isclose(a, b, rtol=tolerance, atol=tolerance, equal_nan=True)
        return close | both_missing
    same = online.astype("object").to_numpy() == offline.astype("object").to_numpy()
    return same | both_missing


def compare(
    feature_view: str,
    join_keys: list[str],
    features: list[str],
    online: pd.DataFrame,
    offline: pd.DataFrame,
    *,
    watermark: datetime,
    ttl: timedelta | None,
    tolerance: float = 1e-9,
    kinds: Mapping[str, str] | None = None,
) -> ConsistencyReport:
    """Compare online and offline frames key by key (pure: frames in, report out); `kinds`
    (feature -> validator kind, from the Feast types) says how to compare complex values."""
    merged = online.merge(
        offline, on=join_keys, how="left", suffixes=("", "__offline"), indicator=True
    )
    in_offline = (merged["_merge"] == "both").to_numpy()
    in_online = merged[EVENT_TS].notna().to_numpy()
    stale = in_online & (
        (merged[EVENT_TS] < pd.Timestamp(watermark - ttl)).to_numpy() if ttl else False
    )
    key_of = [
        tuple(r) if len(join_keys) > 1 else r[0] for r in merged[join_keys].itertuples(index=False)
    ]
    missing = in_offline & ~in_online
    unexpected = in_online & ~in_offline & ~stale
    results, mismatched = [], {}
    any_bad = missing | unexpected
    for name in features:
        kind = (kinds or {}).get(name)
        equal = _values_equal(merged[name], merged[f"{name}__offline"], tolerance, kind)
        differs = in_offline & in_online & ~equal
        bad_keys = [key_of[i] for i in np.flatnonzero(differs | missing | unexpected)]
        mismatched[name] = [key_of[i] for i in np.flatnonzero(differs)]
        any_bad = any_bad | differs
        results.append(
            FeatureConsistency(
                feature_view=feature_view,
                feature=name,
                compared=int((~stale).sum()),
                mismatches=int(differs.sum()),
                missing_online=int(missing.sum()),
                unexpected_online=int(unexpected.sum()),
                stale=int(stale.sum()),
                example_keys=tuple(bad_keys[:5]),
            )
        )
    return ConsistencyReport(
        feature_view=feature_view,
        watermark=watermark,
        sampled=len(merged),
        features=results,
        mismatched_keys=mismatched,
        missing_keys=[key_of[i] for i in np.flatnonzero(missing)],
        bad_keys=[key_of[i] for i in np.flatnonzero(any_bad)],
        compared_keys=int((~stale).sum()),
        stale_keys=[key_of[i] for i in np.flatnonzero(stale)],
    )


def decide(reports: list[ConsistencyReport], max_mismatch_rate: float) -> ConsistencyDecision:
    """Consistent when the share of keys with a wrong or absent value stays within the threshold."""
    cells = sum(r.compared_keys for r in reports)
    bad = sum(len(r.bad_keys) for r in reports)
    rate = bad / cells if cells else 0.0
    reasons = [
        f"{f.feature_view}:{f.feature}: {f.mismatches} mismatched, {f.missing_online} missing "
        f"online, {f.unexpected_online} unexpected of {f.compared} keys "
        f"(e.g. {list(f.example_keys)})"
        for r in reports
        for f in r.features
        if f.bad
    ]
    stale = sum(len(r.stale_keys) for r in reports)
    if not cells:
        reasons.append(
            f"No entity key could be compared: {stale} sampled keys are older than the ttl at the "
            "watermark, so the source is late or was never materialized (freshness breach)."
        )
    consistent = bool(cells) and rate <= max_mismatch_rate
    return ConsistencyDecision(consistent, rate, max_mismatch_rate, reasons)


def check_view(
    store: FeatureStore,
    feature_view: FeatureView,
    spec: ViewSpec,
    *,
    sample_size: int,
    seed: int,
    tolerance: float,
    watermark: datetime | None = None,
    offline_reader: Literal["duckdb", "feast"] = "duckdb",
) -> ConsistencyReport:
    """Sample keys, read both sides, compare (the I/O wrapper around `compare`)."""
    watermark = watermark or feature_view.most_recent_end_time
    if watermark is None:
        raise FeatureStoreError(
            f"Feature view {feature_view.name!r} has never been materialized, so there is no "
            "watermark to check at; run the materialize-features flow first."
        )
    keys = sample_keys(spec, watermark, sample_size, seed)
    online = read_online(store, feature_view, keys)
    if offline_reader == "feast":
        offline = read_offline(store, feature_view, keys, watermark)
    else:
        offline = read_offline_duckdb(spec, keys, watermark, feature_view.ttl or None)
    return compare(
        feature_view.name,
        list(feature_view.join_keys),
        [f.name for f in feature_view.features],
        online,
        offline,
        watermark=watermark,
        ttl=feature_view.ttl or None,
        tolerance=tolerance,
        kinds={f.name: kind_of(f.dtype) for f in feature_view.features},
    )

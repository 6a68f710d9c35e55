"""Plant online/offline skew in a real online store (SQLite or Redis) for consistency tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import redis
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key
from feast.infra.online_stores.sqlite import _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value


def _entity_key(feature_view: FeatureView, key: int) -> EntityKey:
    return EntityKey(join_keys=list(feature_view.join_keys), entity_values=[Value(int64_val=key)])


def delete_online_keys(store: FeatureStore, feature_view: FeatureView, keys: list[int]) -> None:
    """Remove entity keys from the online store behind Feast's back."""
    online = store.config.online_store
    version = store.config.entity_key_serialization_version
    if online.type == "sqlite":
        table = _table_id(store.project, feature_view)
        path = Path(store.config.repo_path or ".") / online.path
        with sqlite3.connect(path) as connection:
            for key in keys:
                blob = serialize_entity_key(_entity_key(feature_view, key), version)
                connection.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (blob,))
        return
    host_port, *options = online.connection_string.split(",")
    host, port = host_port.split(":")
    db = int(dict(o.split("=") for o in options).get("db", 0))
    client = redis.Redis(host=host, port=int(port), db=db)
    for key in keys:
        client.delete(_redis_key(store.project, _entity_key(feature_view, key), version))


def overwrite_online_values(
    store: FeatureStore, view: str, current: pd.DataFrame, feature: str, keys: list[int]
) -> None:
    """Write wrong values for one feature of some keys, as a stray writer would."""
    rows = current[current["customer_id"].isin(keys)].copy()
    if pd.api.types.is_numeric_dtype(rows[feature]):
        rows[feature] = rows[feature] + 1000
    else:
        rows[feature] = rows[feature].astype(str) + "-skewed"
    # One second newer: Redis silently ignores a rewrite with the same event timestamp.
    rows["event_timestamp"] = rows.pop("__online_event_ts") + pd.Timedelta(seconds=1)
    rows["created"] = rows["event_timestamp"]
    store.write_to_online_store(view, rows)

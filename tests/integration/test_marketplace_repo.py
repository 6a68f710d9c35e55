"""A Feast repository shaped unlike the demo (tests/repos/marketplace: string and composite keys,
every Feast type, a push source, python- and pandas-mode on-demand views, no TTL, contracts in
Field tags) through our whole path: materialize, validate, check consistency, train, batch-score
and serve; the online values equal Feast's own `materialize`, key by key, on SQLite and Redis."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from feast import FeatureStore
from mlflow import MlflowClient

from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.materialize import MaterializeParams, materialize_features
from flows.training import TrainParams, train_model
from mlre import inference, registry
from mlre.features import materialize as engine
from mlre.features.consistency import EVENT_TS, read_online
from mlre.features.store import apply_repo, open_store
from mlre.prediction_log import read_predictions
from mlre.serving_config import ServingConfig
from mlre.settings import Settings, get_settings
from serving.app import create_app
from serving.features import read_columns
from serving.models import mlflow_loader
from serving.service import model_table
from tests.support.marketplace import (
    PROFILE_SOURCE,
    REGION,
    SELLER,
    MarketplaceConfig,
    copy_repo,
    generate_marketplace,
    write_marketplace,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CONFIG = MarketplaceConfig(start=datetime(2026, 3, 9, tzinfo=UTC))
FRAMES = generate_marketplace(CONFIG)
# The flows' copy has no corrections (rows repeating a key and event time with a later
# `created`): Feast 0.67's file offline store breaks such ties by a dask sort that is not stable
# (feast/infra/offline_stores/dask.py `_drop_duplicates`), so its historical values may keep the
# original row where the online store, Feast's own materialize included, keeps the correction.
# Materialization and the consistency check above break ties by `created` and are tested with them.
FLOW_FRAMES = generate_marketplace(replace(CONFIG, corrections=0))
VIEWS = ("seller_profile_fv", "seller_region_stats_fv")
START, END = CONFIG.start - timedelta(days=1), CONFIG.end + timedelta(hours=1)


def _marketplace(
    tmp_path: Path, name: str, redis_url: str | None = None, frames: dict | None = None
) -> tuple[Settings, Path]:
    """A fresh copy of the repo with its data, on SQLite or on a Redis database of its own."""
    repo = copy_repo(tmp_path / name)
    write_marketplace(FRAMES if frames is None else frames, repo)
    if redis_url:
        profile = repo / "feature_store.yaml"
        config = yaml.safe_load(profile.read_text())
        config["online_store"] = {"type": "redis", "connection_string": redis_url}
        profile.write_text(yaml.safe_dump(config))
    return Settings(home=tmp_path / f"home-{name}"), repo


def _applied(settings: Settings, repo: Path) -> FeatureStore:
    store = open_store(settings, repo)
    apply_repo(store, repo, settings)
    return store


def _keys(view: str) -> pd.DataFrame:
    """Every key of a view's source, plus one the source never saw."""
    if view == "seller_profile_fv":
        return pd.DataFrame({SELLER: [*CONFIG.seller_ids, "S9999"]})
    pairs = FRAMES["seller_region_stats"][[SELLER, REGION]].drop_duplicates()
    unknown = pd.DataFrame({SELLER: ["S9999"], REGION: [1]})
    return pd.concat([pairs, unknown]).sort_values([SELLER, REGION]).reset_index(drop=True)


def _snapshot(store: FeatureStore, view: str) -> pd.DataFrame:
    return read_online(store, store.get_feature_view(view), _keys(view))


def _as_arrow_map(repo: Path) -> None:
    """Rewrite the profile's Map column (JSON text) as an Arrow map, a layout Feast's own
    materialize cannot read (it fails on the (key, value) pairs) and ours converts."""
    for file in sorted((repo / "data" / PROFILE_SOURCE).glob("*.parquet")):
        table = pq.read_table(file)
        index = table.schema.get_field_index("shipping_fees")
        pairs = [
            None if text is None else list(json.loads(text).items())
            for text in table.column(index).to_pylist()
        ]
        column = pa.array(pairs, pa.map_(pa.string(), pa.float64()))
        pq.write_table(table.set_column(index, "shipping_fees", column), file)


@pytest.fixture(params=["sqlite", "redis"])
def online_url(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite, else a Redis connection string on a fresh database."""
    if request.param == "sqlite":
        return None
    import redis

    server = request.getfixturevalue("redis_server")
    db = 10 + (uuid.uuid4().int % 5)
    redis.Redis(host=server.host, port=server.port, db=db).flushdb()
    return f"{server.connection_string},db={db}"


def test_online_values_of_every_type_equal_feast_materialize(
    tmp_path: Path, online_url: str | None
) -> None:
    ours = _applied(*_marketplace(tmp_path, "ours", online_url))
    theirs_settings, theirs_repo = _marketplace(tmp_path, "theirs", online_url)
    if online_url:  # the two copies share the Redis database: keep them apart by project name
        text = (theirs_repo / "feature_store.yaml").read_text()
        (theirs_repo / "feature_store.yaml").write_text(text.replace("marketplace", "theirs"))
    theirs = _applied(theirs_settings, theirs_repo)
    theirs.materialize(START, END, feature_views=list(VIEWS))
    for view in VIEWS:
        results = engine.materialize_view(
            ours, ours.get_feature_view(view), engine.Window(START, END), partitions=3,
            batch_rows=7,
        )  # fmt: skip
        mine, feast = _snapshot(ours, view), _snapshot(theirs, view)
        pd.testing.assert_frame_equal(mine, feast)
        written = mine[EVENT_TS].notna().sum()
        assert sum(r.keys for r in results) == written == len(_keys(view)) - 1
    # Every type really came back (not a frame of Nones that happens to match).
    profile = _snapshot(ours, "seller_profile_fv").set_index(SELLER)
    served = profile.drop(index="S9999")
    for column, kind in {"shipping_fees": dict, "settings": dict, "address": dict,
                         "recent_ratings": list, "logo_thumbnail": bytes}.items():  # fmt: skip
        assert any(isinstance(v, kind) for v in served[column]), column
    assert profile.loc["S9999"].drop(EVENT_TS).isna().all()


def test_arrow_map_layout_materializes_to_the_same_values(tmp_path: Path) -> None:
    json_store = _applied(*_marketplace(tmp_path, "json"))
    json_store.materialize(START, END, feature_views=["seller_profile_fv"])
    settings, repo = _marketplace(tmp_path, "arrow-map")
    _as_arrow_map(repo)
    ours = _applied(settings, repo)
    view = ours.get_feature_view("seller_profile_fv")
    engine.materialize_view(ours, view, engine.Window(START, END), partitions=2)
    mine, reference = _snapshot(ours, view.name), _snapshot(json_store, view.name)
    # The JSON text held the fees as numbers too: same dicts, key by key.
    pd.testing.assert_frame_equal(mine, reference)


# --- through the flows -----------------------------------------------------------------------


@pytest.fixture
def marketplace_env(tmp_path: Path, prefect_harness: None, mlflow_server, monkeypatch):
    """The flows' environment on a fresh marketplace copy: private home, real MLflow."""
    settings, repo = _marketplace(tmp_path, "flows", frames=FLOW_FRAMES)
    model_name = f"orders-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLRE_HOME", str(settings.home))
    monkeypatch.setenv("MLRE_FEATURE_REPO", str(repo))  # the service opens the settings' repo
    monkeypatch.setenv("MLRE_MLFLOW_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("MLRE_MODEL_NAME", model_name)
    get_settings.cache_clear()
    get_settings().ensure_dirs()
    yield repo, model_name, mlflow_server.tracking_uri
    get_settings.cache_clear()


def _materialize(repo: Path) -> MaterializeParams:
    return MaterializeParams(
        repo_path=str(repo), mode="backfill", start=START, end=END, partitions=2
    )


def test_flows_materialize_check_train_score_and_serve(marketplace_env) -> None:
    repo, model_name, tracking_uri = marketplace_env
    written = materialize_features(_materialize(repo))  # sources validated against contracts
    assert {r.feature_view for r in written} == set(VIEWS)
    decision = validate_feature_consistency(ConsistencyParams(repo_path=str(repo)))
    assert decision.consistent, decision.reasons
    assert decision.mismatch_rate == 0.0

    outcome = train_model(
        TrainParams(
            repo_path=str(repo),
            feature_service="order_model_v2",
            label_source=str(repo / "data" / "orders"),
            label_column="is_cancelled",
            passthrough_columns=[],
            model_family="logistic_regression",
            validation_days=1,
            test_days=1,
        )
    )
    client = MlflowClient(tracking_uri)
    tags = client.get_model_version(model_name, outcome.version).tags
    config = yaml.safe_load(tags["training_config"])  # JSON is YAML
    assert config["entity_columns"] == [SELLER, REGION]  # derived from the service
    assert config["request_columns"] == ["basket_value", "item_count"]
    assert "shipping_fees" not in tags["features"]

    # Batch scoring (point in time) and the online path (latest values) agree on rows whose
    # time is after the last feature row: both read the same values, the model scores them.
    store = open_store(get_settings(), repo)
    model = inference.load_version(tracking_uri, model_name, outcome.version)
    # One order per (seller, region), each at its own second: Feast's file store keeps one
    # entity row per view key and time (two regions of a seller at one instant lose one).
    orders = (
        FLOW_FRAMES["orders"].drop_duplicates([SELLER, REGION], keep="last").reset_index(drop=True)
    )
    seconds = pd.to_timedelta(np.arange(len(orders)), unit="s")
    entities = orders.assign(event_timestamp=pd.Timestamp(END) + seconds)
    batch = inference.score_frame(
        store, model, "order_model_v2", entities, model_name=model_name,
        model_version=outcome.version,
    )  # fmt: skip
    loaded = mlflow_loader(tracking_uri, model_name, store)(outcome.version)
    rows = entities[[SELLER, REGION, "basket_value", "item_count"]].to_dict("records")
    columns = read_columns(store, loaded.plan, rows)
    online = model.predict_proba(pd.DataFrame(model_table(columns, loaded.inputs, len(rows))))[:, 1]
    assert len(batch) == len(rows) > 20
    np.testing.assert_allclose(online, batch["score"].to_numpy(), rtol=0, atol=1e-9)
    assert 0.0 < online.min() < online.max() < 1.0

    # /predict over HTTP: the champion's service says which keys and values an instance needs.
    client.set_registered_model_alias(model_name, registry.CHAMPION, outcome.version)
    # A generous read budget: a loaded machine must not turn the first read into a timeout fallback.
    config = ServingConfig(
        model_name=model_name,
        poll_interval_s=3600,
        log_flush_interval_s=3600,
        feature_timeout_s=5.0,
    )
    with TestClient(create_app(get_settings(), config)) as http:
        answer = http.post("/predict", json={"instances": rows[:3]})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["keys"] for p in predictions] == [
            {SELLER: r[SELLER], REGION: r[REGION]} for r in rows[:3]
        ]
        assert {p["route"] for p in predictions} == {"champion"}
        np.testing.assert_allclose([p["score"] for p in predictions], online[:3], atol=1e-9)
        lacking = {k: v for k, v in rows[0].items() if k != REGION}
        refused = http.post("/predict", json={"instances": [lacking, {**rows[1], SELLER: 7}]})
        assert refused.status_code == 422
        details = refused.json()["detail"]
        assert [d["loc"] for d in details] == [
            ["body", "instances", 0, REGION], ["body", "instances", 1, SELLER],
        ]  # fmt: skip
        assert "order_model_v2" in details[0]["msg"]
    # The log keeps the marketplace's own keys (text and integer), flushed at shutdown.
    log = read_predictions(get_settings().prediction_log_root, model_name)
    assert list(log[SELLER]) == [r[SELLER] for r in rows[:3]]
    assert list(log[REGION]) == [r[REGION] for r in rows[:3]]


def test_training_on_complex_types_is_refused_naming_the_field(marketplace_env) -> None:
    repo, _, _ = marketplace_env
    materialize_features(_materialize(repo))
    state = train_model(
        TrainParams(
            repo_path=str(repo),
            feature_service="seller_everything",
            label_source=str(repo / "data" / "orders"),
            label_column="is_cancelled",
            passthrough_columns=[],
        ),
        return_state=True,
    )
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    for named in ("seller_profile_fv:shipping_fees (Map)", "seller_profile_fv:address",
                  "cannot be model input", "usable here"):  # fmt: skip
        assert named in message, message


def test_a_category_outside_the_contract_stops_materialization(marketplace_env) -> None:
    repo, _, _ = marketplace_env
    frame = FLOW_FRAMES[PROFILE_SOURCE].tail(3).copy()
    frame["tier"] = "platinum"
    frame["created"] = frame["created"] + pd.Timedelta(seconds=1)
    write_marketplace({PROFILE_SOURCE: frame}, repo / "late")  # its own folder, then moved in
    bad = repo / "data" / PROFILE_SOURCE / "late.parquet"
    next((repo / "late" / "data" / PROFILE_SOURCE).glob("*.parquet")).rename(bad)
    state = materialize_features(_materialize(repo), return_state=True)
    assert state.is_failed()
    message = repr(state.result(raise_on_failure=False))
    for named in (str(bad), "column 'tier'", "platinum", "contract:categories"):
        assert named in message, message
    store = open_store(get_settings(), repo)
    view = store.get_feature_view("seller_profile_fv")
    assert read_online(store, view, _keys(view.name))[EVENT_TS].isna().all()  # nothing written

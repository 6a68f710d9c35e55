"""The consistency check finds exactly the planted skew, on SQLite and on Redis."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from mlre.features import consistency as checks
from mlre.features import materialize as engine
from mlre.features.consistency import EVENT_TS, read_online
from tests.support.skew import delete_online_keys, overwrite_online_values

pytestmark = pytest.mark.integration
VIEW = "customer_daily_stats_fv"


def _materialized(make_feature_env, profile: str):
    env = make_feature_env(profile)
    store = env.reopen()
    fv = store.get_feature_view(VIEW)
    window = engine.Window(env.config.start, env.config.end)
    for partition in range(2):
        engine.materialize_partition(store, fv, window, partition, 2)
    engine.record_interval(store, fv, window)
    return env


def _check(env, sample_size: int = 10_000, reader: str = "duckdb") -> checks.ConsistencyReport:
    store = env.reopen()
    fv = store.get_feature_view(VIEW)
    return checks.check_view(
        store,
        fv,
        engine.view_spec(store, fv),
        sample_size=sample_size,
        seed=3,
        tolerance=1e-9,
        offline_reader=reader,
    )


@pytest.mark.parametrize("profile", ["local", "production"])
def test_clean_store_is_consistent(make_feature_env, profile: str) -> None:
    report = _check(_materialized(make_feature_env, profile))
    decision = checks.decide([report], max_mismatch_rate=0.0)
    assert decision.consistent, decision.reasons
    assert report.sampled == 400
    assert all(f.bad == 0 for f in report.features)


@pytest.mark.parametrize(
    ("profile", "reader"), [("local", "duckdb"), ("production", "duckdb"), ("local", "feast")]
)
def test_planted_skew_is_found_exactly(make_feature_env, profile: str, reader: str) -> None:
    env = _materialized(make_feature_env, profile)
    store = env.reopen()
    fv = store.get_feature_view(VIEW)
    ids = env.config.customer_ids
    current = read_online(store, fv, pd.DataFrame({"customer_id": ids}))
    skewed_amount = [int(k) for k in ids[[3, 50, 77]]]
    skewed_channel = [int(k) for k in ids[[10, 11]]]
    deleted = [int(k) for k in ids[[200, 399]]]
    overwrite_online_values(store, VIEW, current, "txn_amount_sum_1d", skewed_amount)
    overwrite_online_values(store, VIEW, current, "preferred_channel", skewed_channel)
    delete_online_keys(store, fv, deleted)

    report = _check(env, reader=reader)

    by_feature = {f.feature: f for f in report.features}
    assert sorted(report.mismatched_keys["txn_amount_sum_1d"]) == skewed_amount
    assert sorted(report.mismatched_keys["preferred_channel"]) == skewed_channel
    untouched = set(by_feature) - {"txn_amount_sum_1d", "preferred_channel"}
    assert all(report.mismatched_keys[f] == [] for f in untouched)
    assert sorted(report.missing_keys) == deleted
    assert by_feature["txn_amount_sum_1d"].bad == 3 + 2
    decision = checks.decide([report], max_mismatch_rate=0.001)
    assert not decision.consistent
    assert any("txn_amount_sum_1d" in reason for reason in decision.reasons)


def test_keys_older_than_ttl_are_reported_stale_not_mismatched(make_feature_env) -> None:
    env = _materialized(make_feature_env, "local")
    store = env.reopen()
    fv = store.get_feature_view(VIEW)
    late = env.config.end + fv.ttl + timedelta(hours=1)
    report = checks.check_view(
        store, fv, engine.view_spec(store, fv), sample_size=50, seed=1, tolerance=0, watermark=late
    )
    assert len(report.stale_keys) == 50
    assert all(f.bad == 0 and f.compared == 0 for f in report.features)
    decision = checks.decide([report], max_mismatch_rate=0.5)
    assert not decision.consistent
    assert "older than the ttl" in decision.reasons[0]
    assert (
        read_online(store, fv, pd.DataFrame({"customer_id": [report.stale_keys[0]]}))[EVENT_TS]
        .notna()
        .all()
    )


def test_duckdb_and_feast_offline_readers_agree_value_for_value(make_feature_env) -> None:
    env = _materialized(make_feature_env, "local")
    store = env.reopen()
    fv = store.get_feature_view(VIEW)
    spec = engine.view_spec(store, fv)
    keys = checks.sample_keys(spec, fv.most_recent_end_time, 400, seed=0)
    for watermark in (fv.most_recent_end_time, env.config.start + timedelta(days=3, hours=5)):
        ours = checks.read_offline_duckdb(spec, keys, watermark, fv.ttl)
        feast = checks.read_offline(store, fv, keys, watermark)
        ours = ours.sort_values("customer_id").reset_index(drop=True)
        feast = feast[ours.columns].sort_values("customer_id").reset_index(drop=True)
        assert len(ours) == len(feast) > 0
        pd.testing.assert_frame_equal(ours, feast, check_dtype=False)

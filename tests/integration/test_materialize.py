"""The bounded materialization engine against real Feast stores (SQLite, and Redis + PostgreSQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from mlre.data.generator import write_source
from mlre.features import materialize as engine
from mlre.features.consistency import EVENT_TS, read_online

pytestmark = pytest.mark.integration
PROFILES = ["local", "production"]
VIEWS = ["customer_daily_stats_fv", "customer_hourly_stats_fv"]


def _all_keys(env) -> pd.DataFrame:
    ids = env.config.customer_ids
    return pd.DataFrame({"customer_id": ids.astype("int64")})


def _online_snapshot(env, view: str) -> pd.DataFrame:
    store = env.reopen()
    return read_online(store, store.get_feature_view(view), _all_keys(env))


def _full_window(env) -> engine.Window:
    return engine.Window(env.config.start, env.config.end + timedelta(days=1))


def _run_engine(env, view: str, window: engine.Window, partitions: int = 4) -> list:
    """Every partition in turn, as the flow's tasks do, with small batches to cross boundaries."""
    store = env.reopen()
    return engine.materialize_view(
        store, store.get_feature_view(view), window, partitions=partitions, batch_rows=97
    )


def _plant_created_ties(env) -> None:
    """Add corrections: same (key, event time) with a later `created` and other values."""
    folder = env.settings.lake_dir / "sources" / "customer_daily_stats"
    frame = pd.read_parquet(folder)
    last = frame[frame["event_timestamp"] == frame["event_timestamp"].max()].head(25).copy()
    last["created"] = last["created"] + pd.Timedelta(hours=1)
    last["txn_amount_sum_1d"] = -1.0
    last["preferred_channel"] = "corrected"
    corrections = folder / "corrections"
    write_source(last, corrections, partition_by_day=False)


@pytest.mark.parametrize("profile", PROFILES)
def test_online_values_identical_to_feast_materialize(make_feature_env, profile: str) -> None:
    ours, theirs = make_feature_env(profile), make_feature_env(profile)
    for env in (ours, theirs):
        _plant_created_ties(env)
    window = _full_window(ours)
    for view in VIEWS:
        results = _run_engine(ours, view, window)
        theirs.reopen().materialize(window.start, window.end, feature_views=[view])
        mine, feast = _online_snapshot(ours, view), _online_snapshot(theirs, view)
        pd.testing.assert_frame_equal(mine, feast, check_dtype=False)
        assert sum(r.keys for r in results) == mine[EVENT_TS].notna().sum() > 0
    corrected = _online_snapshot(ours, "customer_daily_stats_fv")
    assert (corrected["preferred_channel"] == "corrected").sum() == 25


@pytest.mark.parametrize("profile", PROFILES)
def test_rerun_is_idempotent_and_incremental_equals_backfill(make_feature_env, profile) -> None:
    incremental, backfill = make_feature_env(profile), make_feature_env(profile)
    view = "customer_daily_stats_fv"
    middle = incremental.config.start + timedelta(days=3)
    _run_engine(incremental, view, engine.Window(incremental.config.start, middle))
    _run_engine(incremental, view, engine.Window(middle, incremental.config.end))
    before = _online_snapshot(incremental, view)
    _run_engine(incremental, view, engine.Window(middle, incremental.config.end))
    pd.testing.assert_frame_equal(before, _online_snapshot(incremental, view))
    _run_engine(backfill, view, engine.Window(backfill.config.start, backfill.config.end))
    pd.testing.assert_frame_equal(before, _online_snapshot(backfill, view))


@pytest.mark.parametrize("profile", PROFILES)
def test_an_older_window_written_later_keeps_the_newer_values(make_feature_env, profile) -> None:
    """A backfill of old days (or a run racing a newer one) never turns online values back."""
    env = make_feature_env(profile)
    view = "customer_daily_stats_fv"
    _run_engine(env, view, _full_window(env))
    newest = _online_snapshot(env, view)
    _run_engine(env, view, engine.Window(env.config.start, env.config.start + timedelta(days=3)))
    pd.testing.assert_frame_equal(_online_snapshot(env, view), newest)


def test_parallel_partitions_on_sqlite_go_through_one_writer(make_feature_env) -> None:
    parallel, serial = make_feature_env("local"), make_feature_env("local")
    view, window, partitions = "customer_daily_stats_fv", _full_window(parallel), 8

    def one(partition: int) -> engine.PartitionResult:
        store = parallel.reopen()  # each worker its own store and connection, as tasks would
        return engine.materialize_partition(
            store,
            store.get_feature_view(view),
            window,
            partition,
            partitions,
            batch_rows=50,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(partitions)))
    _run_engine(serial, view, window, partitions=1)
    assert sum(r.keys for r in results) == parallel.config.n_customers
    assert len({r.partition for r in results}) == partitions
    pd.testing.assert_frame_equal(_online_snapshot(parallel, view), _online_snapshot(serial, view))


def test_window_bounds_are_inclusive_like_feast(make_feature_env) -> None:
    env = make_feature_env("local")
    view = "customer_daily_stats_fv"
    first_stamp = env.config.start + timedelta(days=1)
    results = _run_engine(env, view, engine.Window(env.config.start, first_stamp))
    assert sum(r.rows for r in results) == env.config.n_customers  # exactly the first day's rows
    snapshot = _online_snapshot(env, view)
    assert (snapshot[EVENT_TS] == pd.Timestamp(first_stamp)).all()


def test_incremental_plan_reads_the_registry(make_feature_env) -> None:
    env = make_feature_env("local")
    view = "customer_daily_stats_fv"
    store = env.reopen()
    fv = store.get_feature_view(view)
    first, last = engine.source_time_range(engine.view_spec(store, fv))
    assert first == env.config.start + timedelta(days=1)
    assert last == env.config.end
    window = engine.plan_window(
        "incremental", start=None, end=None, last_end=None, source_start=first, now=last
    )
    _run_engine(env, view, window)
    fv = env.reopen().get_feature_view(view)
    assert fv.most_recent_end_time == last
    nothing = engine.plan_window(
        "incremental",
        start=None,
        end=None,
        last_end=fv.most_recent_end_time,
        source_start=first,
        now=last,
    )
    assert nothing is None


def test_memory_stays_bounded_by_batches(make_feature_env) -> None:
    env = make_feature_env("local")
    store = env.reopen()
    spec = engine.view_spec(store, store.get_feature_view("customer_daily_stats_fv"))
    batches = list(engine.iter_latest_batches(spec, _full_window(env), 0, 1, batch_rows=64))
    assert max(b.num_rows for b in batches) <= 64
    keys = np.concatenate([b.column("customer_id").to_numpy() for b in batches])
    assert len(keys) == len(np.unique(keys)) == env.config.n_customers

"""Pure feature-store logic: windows, the latest-row SQL, profiles, the consistency comparison."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import pytest

from mlre.errors import ConfigError, MlreError
from mlre.features import consistency as checks
from mlre.features import materialize as engine
from mlre.features.store import profile_path, render_profile

pytestmark = pytest.mark.unit
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = engine.ViewSpec(
    name="v",
    source_uri="unused",
    join_keys=("customer_id",),
    columns=(("amount_src", "amount"),),
    timestamp_field="event_timestamp",
    created_field="created",
)


@pytest.mark.parametrize(
    ("last_end", "start", "source_start", "expected_start"),
    [
        (None, None, T0, T0),  # first run: everything the source has
        (T0 + timedelta(days=2), None, T0, T0 + timedelta(days=2)),  # resume where we stopped
        (None, T0 + timedelta(days=1), T0, T0 + timedelta(days=1)),  # explicit start wins
    ],
)
def test_incremental_window_starts_where_it_should(last_end, start, source_start, expected_start):
    now = T0 + timedelta(days=5)
    window = engine.plan_window(
        "incremental", start=start, end=None, last_end=last_end, source_start=source_start, now=now
    )
    assert window == engine.Window(expected_start, now)


def test_incremental_with_nothing_new_returns_none():
    now = T0 + timedelta(days=1)
    assert (
        engine.plan_window(
            "incremental", start=None, end=None, last_end=now, source_start=T0, now=now
        )
        is None
    )
    assert (
        engine.plan_window(
            "incremental", start=None, end=None, last_end=None, source_start=None, now=now
        )
        is None
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": None, "end": T0}, "needs both start and end"),
        ({"start": T0 + timedelta(days=1), "end": T0}, "is after end"),
        ({"start": datetime(2026, 1, 1), "end": T0}, "has no timezone"),
    ],
)
def test_bad_backfill_windows_are_refused_with_the_parameter_named(kwargs, message):
    with pytest.raises(MlreError, match=message):
        engine.plan_window("backfill", last_end=None, source_start=None, now=T0, **kwargs)


def test_unknown_mode_is_refused():
    with pytest.raises(MlreError, match="Unknown materialization mode"):
        engine.plan_window(
            "sideways",
            start=None,
            end=None,
            last_end=None,  # type: ignore[arg-type]
            source_start=None,
            now=T0,
        )


def _latest(frame: pd.DataFrame, window: engine.Window, partitions: int = 1) -> pd.DataFrame:
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.register("source", frame)
    parts = [
        connection.execute(
            engine.latest_rows_sql(SPEC, p, partitions), {"start": window.start, "end": window.end}
        ).df()
        for p in range(partitions)
    ]
    return pd.concat(parts).sort_values("customer_id").reset_index(drop=True)


def _frame(rows):
    frame = pd.DataFrame(rows, columns=["customer_id", "event_timestamp", "created", "amount_src"])
    for column in ("event_timestamp", "created"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def test_latest_row_per_key_breaks_ties_on_created_and_renames_mapped_columns():
    frame = _frame(
        [
            (1, T0, T0, 1.0),
            (1, T0 + timedelta(hours=1), T0 + timedelta(hours=1), 2.0),
            (1, T0 + timedelta(hours=1), T0 + timedelta(hours=3), 3.0),  # correction, later created
            (2, T0, T0, 9.0),
        ]
    )
    latest = _latest(frame, engine.Window(T0, T0 + timedelta(days=1)))
    assert latest["amount"].tolist() == [3.0, 9.0]
    assert latest["__rows"].tolist() == [3, 1]


def test_window_is_inclusive_at_both_ends_and_excludes_outside_rows():
    frame = _frame(
        [
            (1, T0 - timedelta(seconds=1), T0, 0.0),
            (1, T0, T0, 1.0),
            (2, T0 + timedelta(hours=2), T0, 2.0),
            (2, T0 + timedelta(hours=2, seconds=1), T0, 99.0),
        ]
    )
    latest = _latest(frame, engine.Window(T0, T0 + timedelta(hours=2)))
    assert latest["amount"].tolist() == [1.0, 2.0]


def test_hash_partitions_cover_every_key_exactly_once():
    frame = _frame([(k, T0, T0, float(k)) for k in range(200)])
    latest = _latest(frame, engine.Window(T0, T0), partitions=7)
    assert latest["customer_id"].tolist() == list(range(200))


def test_partition_out_of_range_is_refused():
    with pytest.raises(MlreError, match="outside"):
        engine.latest_rows_sql(SPEC, 4, 4)


def test_profile_with_a_missing_variable_names_it_and_the_file():
    text = "online_store:\n  type: redis\n  connection_string: ${MLRE_TEST_UNSET_VAR}\n"
    with pytest.raises(ConfigError, match=r"MLRE_TEST_UNSET_VAR.*not set") as error:
        render_profile(text, {}, source="feature_store.production.yaml")
    assert "feature_store.production.yaml" in str(error.value)


def test_unknown_online_store_type_is_refused():
    with pytest.raises(ConfigError, match=r"online_store\.type 'cassandra'"):
        render_profile("online_store:\n  type: cassandra\n", {}, source="f.yaml")


def test_unknown_profile_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"\['local', 'production'\]"):
        profile_path(tmp_path, "staging")
    with pytest.raises(ConfigError, match=r"has no feature_store\.yaml"):
        profile_path(tmp_path, "local")


def test_values_substituted_from_settings():
    config = render_profile(
        "registry:\n  path: ${MLRE_HOME}/r.db\n", {"MLRE_HOME": "/x"}, source="f.yaml"
    )
    assert config["registry"]["path"] == "/x/r.db"


def _online(rows):
    frame = pd.DataFrame(rows, columns=["customer_id", checks.EVENT_TS, "a", "c"])
    frame[checks.EVENT_TS] = pd.to_datetime(frame[checks.EVENT_TS], utc=True)
    return frame


def test_compare_classifies_every_key():
    watermark = T0 + timedelta(days=3)
    online = _online(
        [
            (1, T0 + timedelta(days=3), 1.0, "x"),  # equal
            (2, T0 + timedelta(days=3), 2.5, "x"),  # numeric mismatch
            (3, T0 + timedelta(days=3), 3.0, "y"),  # categorical mismatch
            (4, None, None, None),  # missing online
            (5, T0, 5.0, "x"),  # stale: older than ttl
            (6, T0 + timedelta(days=3), None, "x"),  # missing value equals missing value
        ]
    )
    offline = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4, 6],
            "a": [1.0, 2.0, 3.0, 4.0, float("nan")],
            "c": ["x", "x", "z", "x", "x"],
        }
    )
    report = checks.compare(
        "v",
        ["customer_id"],
        ["a", "c"],
        online,
        offline,
        watermark=watermark,
        ttl=timedelta(days=1),
    )
    assert report.mismatched_keys == {"a": [2], "c": [3]}
    assert report.missing_keys == [4]
    assert report.stale_keys == [5]
    assert sorted(report.bad_keys) == [2, 3, 4]
    assert report.compared_keys == 5
    decision = checks.decide([report], max_mismatch_rate=0.6)
    assert decision.consistent
    assert decision.mismatch_rate == pytest.approx(3 / 5)
    assert not checks.decide([report], max_mismatch_rate=0.1).consistent


def test_tolerance_absorbs_float_noise_only():
    online = _online([(1, T0, 1.0 + 1e-12, "x"), (2, T0, 1.1, "x")])
    offline = pd.DataFrame({"customer_id": [1, 2], "a": [1.0, 1.0], "c": ["x", "x"]})
    report = checks.compare(
        "v", ["customer_id"], ["a", "c"], online, offline, watermark=T0, ttl=None, tolerance=1e-9
    )
    assert report.mismatched_keys["a"] == [2]

"""The source-data generator keeps its contract, is deterministic and each drift knob works."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mlre.data import generator as gen
from mlre.data.generator import (
    CHANNELS,
    DAILY_FEATURES,
    DAILY_SOURCE,
    DRIFTED_LABEL_MODEL,
    HOURLY_SOURCE,
    LABEL_MODEL,
    TRANSACTIONS_SOURCE,
    GeneratorConfig,
    Scenario,
    generate_daily_stats,
    generate_hourly_stats,
    generate_sources,
    generate_transactions,
    join_daily_features,
    write_source,
    write_sources,
)

pytestmark = pytest.mark.unit

START = datetime(2026, 1, 1, tzinfo=UTC)
SMALL = GeneratorConfig(n_customers=300, days=8, seed=11)
# Big enough for stable label statistics (about 5.6k transactions), still well under a second.
LABELS = GeneratorConfig(n_customers=2000, days=15, seed=3)

TS = "datetime64[us, UTC]"
CONTRACT: dict[str, dict[str, str]] = {
    DAILY_SOURCE: {
        "customer_id": "int64",
        "event_timestamp": TS,
        "created": TS,
        "txn_count_1d": "int64",
        "txn_amount_sum_1d": "float64",
        "txn_amount_avg_1d": "float64",
        "txn_amount_max_1d": "float64",
        "distinct_merchants_1d": "int64",
        "night_txn_share_1d": "float64",
        "foreign_txn_share_1d": "float64",
        "avg_amount_30d": "float64",
        "chargeback_count_90d": "int64",
        "preferred_channel": "object",
    },
    HOURLY_SOURCE: {
        "customer_id": "int64",
        "event_timestamp": TS,
        "created": TS,
        "txn_count_1h": "int64",
        "txn_amount_sum_1h": "float64",
        "failed_auth_count_1h": "int64",
    },
    TRANSACTIONS_SOURCE: {
        "transaction_id": "int64",
        "customer_id": "int64",
        "event_timestamp": TS,
        "amount": "float64",
        "merchant_category": "object",
        "is_fraud": "int64",
    },
}
KEYS = {
    DAILY_SOURCE: ["customer_id", "event_timestamp"],
    HOURLY_SOURCE: ["customer_id", "event_timestamp"],
    TRANSACTIONS_SOURCE: ["transaction_id"],
}


@pytest.fixture(scope="module")
def small() -> dict[str, pd.DataFrame]:
    return generate_sources(SMALL)


@pytest.fixture(scope="module")
def labelled() -> dict[str, pd.DataFrame]:
    return generate_sources(LABELS)


def _daily(**scenario: object) -> pd.DataFrame:
    return generate_daily_stats(GeneratorConfig(n_customers=500, days=10, seed=5, **_sc(scenario)))


def _sc(scenario: dict[str, object]) -> dict[str, Scenario]:
    return {"scenario": Scenario(**scenario)} if scenario else {}


# ---------------------------------------------------------------------------- contract


@pytest.mark.parametrize("source", list(CONTRACT))
def test_columns_and_dtypes_match_the_contract(small: dict[str, pd.DataFrame], source: str) -> None:
    frame = small[source]
    assert {c: str(t) for c, t in frame.dtypes.items()} == CONTRACT[source]
    assert len(frame) > 0


def test_daily_has_exactly_the_ten_features() -> None:
    assert len(DAILY_FEATURES) == 10
    assert set(DAILY_FEATURES) == set(CONTRACT[DAILY_SOURCE]) - {
        "customer_id",
        "event_timestamp",
        "created",
    }


@pytest.mark.parametrize("source", list(CONTRACT))
def test_no_duplicate_keys(small: dict[str, pd.DataFrame], source: str) -> None:
    assert not small[source].duplicated(KEYS[source]).any()


def test_daily_rows_cover_every_customer_day_stamped_at_end_of_day(
    small: dict[str, pd.DataFrame],
) -> None:
    daily = small[DAILY_SOURCE]
    assert len(daily) == SMALL.n_customers * SMALL.days
    stamps = sorted(daily["event_timestamp"].unique())
    assert stamps[0] == pd.Timestamp(START + timedelta(days=1))
    assert stamps[-1] == pd.Timestamp(START + timedelta(days=SMALL.days))
    assert (daily["event_timestamp"] == daily["event_timestamp"].dt.floor("D")).all()
    assert daily["customer_id"].min() == SMALL.customer_id_offset
    lag = daily["created"] - daily["event_timestamp"]
    assert lag.min() >= pd.Timedelta(minutes=1)
    assert lag.max() <= pd.Timedelta(minutes=15)


def test_features_are_physically_valid(small: dict[str, pd.DataFrame]) -> None:
    daily = small[DAILY_SOURCE]
    for share in ("night_txn_share_1d", "foreign_txn_share_1d"):
        assert daily[share].between(0.0, 1.0).all()
    for col in ("txn_count_1d", "distinct_merchants_1d", "chargeback_count_90d"):
        assert (daily[col] >= 0).all()
    assert (daily["distinct_merchants_1d"] <= daily["txn_count_1d"]).all()
    assert (daily["txn_amount_max_1d"] <= daily["txn_amount_sum_1d"] + 1e-6).all()
    assert set(daily["preferred_channel"]) <= set(CHANNELS)


def test_hourly_is_sparse_at_the_requested_density_and_on_the_hour(
    labelled: dict[str, pd.DataFrame],
) -> None:
    hourly = labelled[HOURLY_SOURCE]
    per_customer_day = len(hourly) / (LABELS.n_customers * LABELS.days)
    assert per_customer_day == pytest.approx(LABELS.hourly_rows_per_customer_day, rel=0.1)
    ts = hourly["event_timestamp"]
    assert (ts == ts.dt.floor("h")).all()
    assert ts.min() > pd.Timestamp(START)
    assert ts.max() <= pd.Timestamp(START + timedelta(days=LABELS.days))
    assert (hourly["txn_count_1h"] >= 1).all()


def test_every_transaction_sees_a_daily_row_and_none_falls_on_day_zero(
    labelled: dict[str, pd.DataFrame],
) -> None:
    tx, daily = labelled[TRANSACTIONS_SOURCE], labelled[DAILY_SOURCE]
    assert tx["event_timestamp"].min() >= pd.Timestamp(START + timedelta(days=1))
    assert tx["event_timestamp"].max() < pd.Timestamp(START + timedelta(days=LABELS.days))
    joined = join_daily_features(tx, daily)
    assert joined["txn_count_1d"].notna().all()
    assert len(tx) / (LABELS.n_customers * (LABELS.days - 1)) == pytest.approx(0.2, rel=0.01)
    assert tx["transaction_id"].is_unique


def test_daily_values_are_autocorrelated_per_customer(labelled: dict[str, pd.DataFrame]) -> None:
    daily = labelled[DAILY_SOURCE]
    early = daily[daily["event_timestamp"] <= pd.Timestamp(START + timedelta(days=7))]
    late = daily[daily["event_timestamp"] > pd.Timestamp(START + timedelta(days=7))]
    spend_early = early.groupby("customer_id")["txn_amount_sum_1d"].mean()
    spend_late = late.groupby("customer_id")["txn_amount_sum_1d"].mean()
    assert spend_early.corr(spend_late) > 0.6


@pytest.mark.parametrize(("amplitude", "lo", "hi"), [(0.0, 0.9, 1.1), (0.4, 1.4, 2.2)])
def test_weekend_spend_follows_the_seasonal_amplitude(
    amplitude: float, lo: float, hi: float
) -> None:
    daily = generate_daily_stats(
        GeneratorConfig(
            n_customers=1000, days=14, seed=2, scenario=Scenario(seasonal_amplitude=amplitude)
        )
    )
    # A row stamped D 00:00 describes day D-1.
    described = daily["event_timestamp"] - pd.Timedelta(days=1)
    weekend = described.dt.weekday >= 5
    spend = daily["txn_amount_sum_1d"]
    assert lo < spend[weekend].mean() / spend[~weekend].mean() < hi


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frames() -> None:
    first, second = generate_sources(SMALL), generate_sources(SMALL)
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name], check_exact=True)
        assert pd.util.hash_pandas_object(first[name]).equals(
            pd.util.hash_pandas_object(second[name])
        )


def test_another_seed_gives_other_data(small: dict[str, pd.DataFrame]) -> None:
    other = generate_daily_stats(GeneratorConfig(n_customers=300, days=8, seed=12))
    assert not other["txn_amount_sum_1d"].equals(small[DAILY_SOURCE]["txn_amount_sum_1d"])


def test_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    a = write_source(generate_daily_stats(SMALL), tmp_path / "a")
    b = write_source(generate_daily_stats(SMALL), tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------- labels


def test_fraud_rate_is_in_the_documented_range(labelled: dict[str, pd.DataFrame]) -> None:
    assert 0.02 <= labelled[TRANSACTIONS_SOURCE]["is_fraud"].mean() <= 0.06


def test_true_logit_separates_fraud(labelled: dict[str, pd.DataFrame]) -> None:
    tx = labelled[TRANSACTIONS_SOURCE]
    joined = join_daily_features(tx, labelled[DAILY_SOURCE])
    assert roc_auc_score(tx["is_fraud"], LABEL_MODEL.logit(joined)) > 0.8


def _fit_signs(tx: pd.DataFrame, daily: pd.DataFrame) -> dict[str, float]:
    joined = join_daily_features(tx, daily)
    x = pd.DataFrame(
        {
            "night_txn_share_1d": joined["night_txn_share_1d"],
            "foreign_txn_share_1d": joined["foreign_txn_share_1d"],
            "chargeback_count_90d": joined["chargeback_count_90d"],
            "amount_ratio": LABEL_MODEL.amount_ratio_term(joined),
            "distinct_merchants_1d": joined["distinct_merchants_1d"],
        }
    )
    model = LogisticRegression(C=100.0, max_iter=2000).fit(x, tx["is_fraud"])
    return dict(zip(x.columns, model.coef_[0], strict=True))


_TRUE_COEFS = {
    "night_txn_share_1d": "night_share",
    "foreign_txn_share_1d": "foreign_share",
    "chargeback_count_90d": "chargebacks",
    "amount_ratio": "amount_ratio",
    "distinct_merchants_1d": "distinct_merchants",
}


@pytest.mark.parametrize("column", list(_TRUE_COEFS))
def test_logistic_regression_recovers_the_label_model(
    labelled: dict[str, pd.DataFrame], column: str
) -> None:
    coef = _fit_signs(labelled[TRANSACTIONS_SOURCE], labelled[DAILY_SOURCE])[column]
    true = getattr(LABEL_MODEL, _TRUE_COEFS[column])
    if true == 0:
        assert abs(coef) < 0.25
    else:
        assert coef == pytest.approx(true, rel=0.35)


def test_labels_come_from_the_supplied_daily_frame(labelled: dict[str, pd.DataFrame]) -> None:
    daily = labelled[DAILY_SOURCE].copy()
    daily["night_txn_share_1d"] = 1.0  # every customer is now a night owl
    tx = generate_transactions(LABELS, daily)
    assert tx["is_fraud"].mean() > labelled[TRANSACTIONS_SOURCE]["is_fraud"].mean() * 2


def test_transactions_without_a_daily_row_raise(labelled: dict[str, pd.DataFrame]) -> None:
    daily = labelled[DAILY_SOURCE]
    partial = daily[daily["event_timestamp"] < pd.Timestamp(START + timedelta(days=5))]
    with pytest.raises(ValueError, match="no daily row"):
        generate_transactions(LABELS, partial)


# ---------------------------------------------------------------------------- scenario knobs


@pytest.mark.parametrize(
    ("feature", "k"),
    [("avg_amount_30d", 1.0), ("txn_amount_sum_1d", 0.5), ("txn_count_1d", 2.0)],
)
def test_covariate_shift_moves_only_the_chosen_feature(feature: str, k: float) -> None:
    base = _daily()
    shifted = _daily(covariate_shift={feature: k})
    moved = (shifted[feature].mean() - base[feature].mean()) / base[feature].std()
    assert moved == pytest.approx(k, abs=0.05)
    assert shifted[feature].dtype == base[feature].dtype
    others = [c for c in DAILY_FEATURES if c != feature]
    pd.testing.assert_frame_equal(shifted[others], base[others])


def test_covariate_shift_applies_to_hourly_features() -> None:
    cfg = GeneratorConfig(n_customers=500, days=10, seed=5)
    base = generate_hourly_stats(cfg)
    shifted = generate_hourly_stats(
        GeneratorConfig(
            n_customers=500,
            days=10,
            seed=5,
            scenario=Scenario(covariate_shift={"txn_amount_sum_1h": 1.0}),
        )
    )
    moved = (shifted["txn_amount_sum_1h"].mean() - base["txn_amount_sum_1h"].mean()) / base[
        "txn_amount_sum_1h"
    ].std()
    assert moved == pytest.approx(1.0, abs=0.05)
    assert shifted["txn_count_1h"].equals(base["txn_count_1h"])


@pytest.mark.parametrize(
    ("feature", "k", "check"),
    [
        ("chargeback_count_90d", -50.0, "zero"),
        ("night_txn_share_1d", 30.0, "one"),
        ("txn_count_1d", 0.7, "int"),
    ],
)
def test_shifts_keep_integers_integer_and_shares_in_range(
    feature: str, k: float, check: str
) -> None:
    shifted = _daily(covariate_shift={feature: k})[feature]
    if check == "zero":
        assert (shifted == 0).all()
        assert shifted.dtype == np.int64
    elif check == "one":
        assert (shifted == 1.0).all()
    else:
        assert shifted.dtype == np.int64
        assert (shifted >= 0).all()


@pytest.mark.parametrize(
    ("feature", "share"),
    [("night_txn_share_1d", 0.2), ("txn_count_1d", 0.3), ("preferred_channel", 0.1)],
)
def test_missing_share_blanks_about_the_requested_share(feature: str, share: float) -> None:
    daily = _daily(missing_share={feature: share})
    assert daily[feature].isna().mean() == pytest.approx(share, abs=0.02)
    others = [c for c in DAILY_FEATURES if c != feature]
    assert not daily[others].isna().any().any()
    if feature == "txn_count_1d":
        # Nullable ints stay ints in parquet instead of silently turning into floats.
        assert str(daily[feature].dtype) == "Int64"


def test_missing_share_applies_to_hourly_features() -> None:
    hourly = generate_hourly_stats(
        GeneratorConfig(
            n_customers=500,
            days=10,
            seed=5,
            scenario=Scenario(missing_share={"txn_amount_sum_1h": 0.25}),
        )
    )
    assert hourly["txn_amount_sum_1h"].isna().mean() == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize("share", [0.05, 0.3])
def test_new_category_appears_only_when_asked(share: float) -> None:
    assert set(_daily()["preferred_channel"]) == set(CHANNELS)
    drifted = _daily(new_category="crypto_wallet", new_category_share=share)
    observed = (drifted["preferred_channel"] == "crypto_wallet").mean()
    assert observed == pytest.approx(share, abs=0.02)
    assert set(drifted["preferred_channel"]) == {*CHANNELS, "crypto_wallet"}


def test_gradual_drift_grows_over_the_window() -> None:
    base = _daily()
    drifted = _daily(gradual_drift={"avg_amount_30d": 2.0})
    std = base["avg_amount_30d"].std()
    delta = (drifted["avg_amount_30d"] - base["avg_amount_30d"]).groupby(
        drifted["event_timestamp"]
    ).mean() / std
    assert delta.is_monotonic_increasing
    assert delta.iloc[0] < 0.3
    assert delta.iloc[-1] == pytest.approx(2.0, abs=0.05)


def test_concept_drift_changes_labels_but_not_features() -> None:
    drifted_cfg = GeneratorConfig(
        n_customers=LABELS.n_customers,
        days=LABELS.days,
        seed=LABELS.seed,
        scenario=Scenario(concept_drift=1.0),
    )
    base, drifted = generate_sources(LABELS), generate_sources(drifted_cfg)
    for name in (DAILY_SOURCE, HOURLY_SOURCE):
        pd.testing.assert_frame_equal(base[name], drifted[name])
    tx_b, tx_d = base[TRANSACTIONS_SOURCE], drifted[TRANSACTIONS_SOURCE]
    assert not tx_b["is_fraud"].equals(tx_d["is_fraud"])
    joined = join_daily_features(tx_d, drifted[DAILY_SOURCE])
    auc_new = roc_auc_score(tx_d["is_fraud"], DRIFTED_LABEL_MODEL.logit(joined))
    auc_old = roc_auc_score(tx_d["is_fraud"], LABEL_MODEL.logit(joined))
    assert auc_new > auc_old + 0.03
    coef = _fit_signs(tx_d, drifted[DAILY_SOURCE])
    assert abs(coef["night_txn_share_1d"]) < 1.0
    assert coef["distinct_merchants_1d"] == pytest.approx(
        DRIFTED_LABEL_MODEL.distinct_merchants, rel=0.35
    )


def test_partial_concept_drift_blends_coefficients() -> None:
    model = gen.label_model_for(Scenario(concept_drift=0.5))
    assert model.night_share == pytest.approx(
        (LABEL_MODEL.night_share + DRIFTED_LABEL_MODEL.night_share) / 2
    )


# ---------------------------------------------------------------------------- validation of knobs


@pytest.mark.parametrize("knob", ["covariate_shift", "missing_share", "gradual_drift"])
def test_unknown_feature_in_a_knob_raises_naming_it(knob: str) -> None:
    with pytest.raises(ValueError, match=r"'no_such_feature'.*txn_count_1d"):
        Scenario(**{knob: {"no_such_feature": 0.1}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"covariate_shift": {"preferred_channel": 1.0}}, "preferred_channel"),
        ({"missing_share": {"txn_count_1d": 1.5}}, "missing_share"),
        ({"concept_drift": 1.2}, "concept_drift"),
        ({"new_category": "pos"}, "already a known channel"),
        ({"new_category_share": -0.1}, "new_category_share"),
        ({"seasonal_amplitude": 3.0}, "seasonal_amplitude"),
    ],
)
def test_invalid_scenario_values_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scenario(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_customers": 0}, "n_customers"),
        ({"days": 1}, "days"),
        ({"start": datetime(2026, 1, 1)}, "timezone-naive"),
        ({"start": datetime(2026, 1, 1, 6, tzinfo=UTC)}, "midnight UTC"),
        ({"transactions_per_customer_day": 0.0}, "transactions_per_customer_day"),
        ({"hourly_rows_per_customer_day": -1.0}, "hourly_rows_per_customer_day"),
    ],
)
def test_invalid_config_raises(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**kwargs)  # type: ignore[arg-type]


def test_scenario_mappings_are_frozen() -> None:
    shift = {"txn_count_1d": 1.0}
    scenario = Scenario(covariate_shift=shift)
    shift["txn_count_1d"] = 5.0
    assert scenario.covariate_shift["txn_count_1d"] == 1.0
    with pytest.raises(TypeError):
        scenario.covariate_shift["txn_count_1d"] = 2.0  # type: ignore[index]


# ---------------------------------------------------------------------------- writing


def test_write_source_one_file_per_day_round_trips_dtypes(
    tmp_path: Path, small: dict[str, pd.DataFrame]
) -> None:
    hourly = small[HOURLY_SOURCE]
    paths = write_source(hourly, tmp_path / "hourly")
    days = sorted(hourly["event_timestamp"].dt.strftime("%Y%m%d").unique())
    assert [p.name for p in paths] == [f"part-{d}.parquet" for d in days]
    assert all(p.parent == tmp_path / "hourly" for p in paths)  # no hive key=value folders
    schema = pq.read_schema(paths[0])
    for col in ("event_timestamp", "created"):
        assert str(schema.field(col).type) == "timestamp[us, tz=UTC]"
    back = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    expected = hourly.sort_values(["event_timestamp", "customer_id"], kind="stable")
    pd.testing.assert_frame_equal(back, expected.reset_index(drop=True))


def test_write_source_is_idempotent_and_leaves_no_temp_files(
    tmp_path: Path, small: dict[str, pd.DataFrame]
) -> None:
    daily = small[DAILY_SOURCE]
    first = write_source(daily, tmp_path)
    before = {p.name: p.read_bytes() for p in first}
    second = write_source(daily, tmp_path)
    assert {p.name: p.read_bytes() for p in second} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    rows = sum(pq.read_metadata(p).num_rows for p in tmp_path.iterdir())
    assert rows == len(daily)


def test_write_source_replaces_a_day_atomically(
    tmp_path: Path, small: dict[str, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    daily = small[DAILY_SOURCE]
    one_day = daily[daily["event_timestamp"] == daily["event_timestamp"].min()]
    (target,) = write_source(one_day, tmp_path)
    original = target.read_bytes()

    def crash(table: object, where: Path) -> None:
        Path(where).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(gen.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_source(one_day.assign(txn_count_1d=0), tmp_path)
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_write_source_single_file_and_bad_timestamps(
    tmp_path: Path, small: dict[str, pd.DataFrame]
) -> None:
    tx = small[TRANSACTIONS_SOURCE]
    (path,) = write_source(tx, tmp_path, partition_by_day=False)
    assert pq.read_metadata(path).num_rows == len(tx)
    naive = tx.assign(event_timestamp=tx["event_timestamp"].dt.tz_localize(None))
    with pytest.raises(ValueError, match="timezone-aware"):
        write_source(naive, tmp_path / "naive")


def test_write_sources_lays_out_the_lake(tmp_path: Path, small: dict[str, pd.DataFrame]) -> None:
    folders = write_sources(small, tmp_path)
    assert set(folders) == {DAILY_SOURCE, HOURLY_SOURCE, TRANSACTIONS_SOURCE}
    for name, folder in folders.items():
        assert folder == tmp_path / "sources" / name
        rows = sum(pq.read_metadata(p).num_rows for p in folder.glob("part-*.parquet"))
        assert rows == len(small[name])

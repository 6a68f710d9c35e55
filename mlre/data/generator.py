"""Deterministic, vectorized source data for the card-transaction fraud demo.

Three sources share one set of seeded customer profiles:

- `customer_daily_stats`: one row per customer per day, stamped at midnight UTC at the END of the
  day it describes (a transaction on day D sees the row stamped D 00:00, i.e. day D-1's stats).
- `customer_hourly_stats`: sparse rows for active customer-hours, stamped at the end of the hour.
- `transactions`: label events on days 1..N-1 of the window. `is_fraud ~ Bernoulli(sigmoid(logit))`
  with `logit = LabelModel.logit(...)` of the point-in-time daily features, so tests can check
  that a model (or a feature pipeline) recovers a relationship we know exactly.

A `Scenario` injects drift (covariate shift, missing values, a new category, gradual drift,
concept drift) after the base data is drawn, from its own random stream, so the same seed gives the
same base data with and without drift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DAILY_SOURCE = "customer_daily_stats"
HOURLY_SOURCE = "customer_hourly_stats"
TRANSACTIONS_SOURCE = "transactions"
SOURCE_NAMES: tuple[str, ...] = (DAILY_SOURCE, HOURLY_SOURCE, TRANSACTIONS_SOURCE)

ENTITY_COLUMN = "customer_id"
TIMESTAMP_COLUMN = "event_timestamp"
CREATED_COLUMN = "created"
LABEL_COLUMN = "is_fraud"

CHANNELS: tuple[str, ...] = ("pos", "online", "atm", "contactless")
_CHANNEL_PROBS = np.array([0.45, 0.30, 0.05, 0.20])
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurants",
    "fuel",
    "online_retail",
    "electronics",
    "travel",
    "entertainment",
)
_MERCHANT_PROBS = np.array([0.28, 0.20, 0.14, 0.18, 0.07, 0.05, 0.08])

FeatureKind = Literal["int", "share", "amount", "string"]

# How each feature behaves under a shift: ints are rounded and clipped at 0, shares clipped to
# [0, 1], amounts clipped at 0 (a negative spend is not a drift, it is a bug).
DAILY_FEATURES: Mapping[str, FeatureKind] = MappingProxyType(
    {
        "txn_count_1d": "int",
        "txn_amount_sum_1d": "amount",
        "txn_amount_avg_1d": "amount",
        "txn_amount_max_1d": "amount",
        "distinct_merchants_1d": "int",
        "night_txn_share_1d": "share",
        "foreign_txn_share_1d": "share",
        "avg_amount_30d": "amount",
        "chargeback_count_90d": "int",
        "preferred_channel": "string",
    }
)
HOURLY_FEATURES: Mapping[str, FeatureKind] = MappingProxyType(
    {
        "txn_count_1h": "int",
        "txn_amount_sum_1h": "amount",
        "failed_auth_count_1h": "int",
    }
)
ALL_FEATURES: Mapping[str, FeatureKind] = MappingProxyType({**DAILY_FEATURES, **HOURLY_FEATURES})
NUMERIC_FEATURES: tuple[str, ...] = tuple(k for k, v in ALL_FEATURES.items() if v != "string")
CATEGORY_FEATURE = "preferred_channel"

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Independent random streams: adding a knob or a source never changes the numbers of another one.
_STREAM_PROFILES = 1
_STREAM_DAILY = 2
_STREAM_HOURLY = 3
_STREAM_TRANSACTIONS = 4
_STREAM_SCENARIO_DAILY = 5
_STREAM_SCENARIO_HOURLY = 6
_STREAM_JITTER_DAILY = 7
_STREAM_JITTER_HOURLY = 8
_STREAM_LABELS = 9


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _check_feature_keys(knob: str, keys: Mapping[str, float], valid: tuple[str, ...]) -> None:
    """Raise ValueError naming the first unknown feature in a scenario knob."""
    for key in keys:
        if key not in valid:
            raise ValueError(
                f"Scenario.{knob}: unknown feature {key!r}; valid features are: "
                f"{', '.join(valid)}. Fix the key or drop it from the scenario."
            )


def _check_finite(knob: str, values: Mapping[str, float], lo: float, hi: float) -> None:
    """Raise ValueError when a knob value is not a finite number in [lo, hi]."""
    for key, value in values.items():
        if not (np.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"Scenario.{knob}[{key!r}] = {value!r} must be in [{lo}, {hi}].")


@dataclass(frozen=True)
class Scenario:
    """Drift injected into generated data; defaults mean "no drift" (only weekly seasonality)."""

    # feature -> shift of every row in the window, in units of that feature's std
    covariate_shift: Mapping[str, float] = field(default_factory=dict)
    # feature -> share of rows whose value is set to missing (NaN / None / pd.NA)
    missing_share: Mapping[str, float] = field(default_factory=dict)
    # a never-seen preferred_channel value, given to `new_category_share` of daily rows
    new_category: str | None = None
    new_category_share: float = 0.1
    # feature -> shift in std units reached at the END of the window, 0 at its start
    gradual_drift: Mapping[str, float] = field(default_factory=dict)
    # 0 = LabelModel, 1 = DRIFTED_LABEL_MODEL, in between a linear blend of the coefficients
    concept_drift: float = 0.0
    # weekend spend is (1 + amplitude) x the weekly mean; part of the normal, undrifted data
    seasonal_amplitude: float = 0.2

    def __post_init__(self) -> None:
        _check_feature_keys("covariate_shift", self.covariate_shift, NUMERIC_FEATURES)
        _check_feature_keys("gradual_drift", self.gradual_drift, NUMERIC_FEATURES)
        _check_feature_keys("missing_share", self.missing_share, tuple(ALL_FEATURES))
        _check_finite("covariate_shift", self.covariate_shift, -1e6, 1e6)
        _check_finite("gradual_drift", self.gradual_drift, -1e6, 1e6)
        _check_finite("missing_share", self.missing_share, 0.0, 1.0)
        if not 0.0 <= self.concept_drift <= 1.0:
            raise ValueError(f"Scenario.concept_drift = {self.concept_drift!r} must be in [0, 1].")
        if not 0.0 <= self.new_category_share <= 1.0:
            raise ValueError(
                f"Scenario.new_category_share = {self.new_category_share!r} must be in [0, 1]."
            )
        if self.new_category is not None and self.new_category in CHANNELS:
            raise ValueError(
                f"Scenario.new_category {self.new_category!r} is already a known channel "
                f"({', '.join(CHANNELS)}); pick a value never seen in training data."
            )
        # The weekday factor is 1 - 2/5 * amplitude; above 1 the data stops looking like spend.
        if not 0.0 <= self.seasonal_amplitude <= 1.0:
            raise ValueError(
                f"Scenario.seasonal_amplitude = {self.seasonal_amplitude!r} must be in [0, 1]."
            )
        # Freeze the mappings so a shared Scenario cannot be changed behind a caller's back.
        for name in ("covariate_shift", "missing_share", "gradual_drift"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


@dataclass(frozen=True)
class GeneratorConfig:
    """Size, window, seed and scenario of one generated data set."""

    n_customers: int = 10_000
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: int = 30
    seed: int = 7
    scenario: Scenario = field(default_factory=Scenario)
    hourly_rows_per_customer_day: float = 1.5
    transactions_per_customer_day: float = 0.2
    customer_id_offset: int = 1000

    def __post_init__(self) -> None:
        if self.n_customers < 1:
            raise ValueError(f"GeneratorConfig.n_customers = {self.n_customers} must be >= 1.")
        # Transactions live on days 1..N-1, so one day would give a source with no labels.
        if self.days < 2:
            raise ValueError(f"GeneratorConfig.days = {self.days} must be >= 2.")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError(
                f"GeneratorConfig.start = {self.start!r} is timezone-naive; "
                "pass an aware UTC midnight, e.g. datetime(2026, 1, 1, tzinfo=UTC)."
            )
        start_utc = self.start.astimezone(UTC)
        if start_utc != start_utc.replace(hour=0, minute=0, second=0, microsecond=0):
            raise ValueError(
                f"GeneratorConfig.start = {self.start.isoformat()} must be midnight UTC."
            )
        object.__setattr__(self, "start", start_utc)
        for name in ("hourly_rows_per_customer_day", "transactions_per_customer_day"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"GeneratorConfig.{name} = {value!r} must be > 0.")
        if self.customer_id_offset < 0:
            raise ValueError(
                f"GeneratorConfig.customer_id_offset = {self.customer_id_offset} must be >= 0."
            )
        if self.seed < 0:
            raise ValueError(f"GeneratorConfig.seed = {self.seed} must be >= 0.")

    @property
    def start_us(self) -> int:
        """Window start as microseconds since the epoch."""
        return (self.start - _EPOCH) // timedelta(microseconds=1)

    @property
    def end(self) -> datetime:
        """Window end (exclusive): the stamp of the last daily row."""
        return self.start + timedelta(days=self.days)

    @property
    def customer_ids(self) -> np.ndarray:
        """All customer ids of this config, int64."""
        return np.arange(self.n_customers, dtype=np.int64) + self.customer_id_offset


# --------------------------------------------------------------------------------------------
# The label model
# --------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class LabelModel:
    """Coefficients of the true fraud logit over point-in-time daily features of the customer.

    logit = intercept
          + night_share * night_txn_share_1d
          + foreign_share * foreign_txn_share_1d
          + chargebacks * chargeback_count_90d
          + amount_ratio * min(amount / avg_amount_30d, AMOUNT_RATIO_CAP)
          + distinct_merchants * distinct_merchants_1d

    A missing feature value (NaN, or avg_amount_30d <= 0) contributes 0 to the logit.
    """

    intercept: float = -6.0
    night_share: float = 4.0
    foreign_share: float = 5.0
    chargebacks: float = 0.5
    amount_ratio: float = 0.45
    distinct_merchants: float = 0.0

    AMOUNT_RATIO_CAP = 10.0
    COLUMNS = (
        "amount",
        "night_txn_share_1d",
        "foreign_txn_share_1d",
        "chargeback_count_90d",
        "avg_amount_30d",
        "distinct_merchants_1d",
    )

    def amount_ratio_term(self, frame: pd.DataFrame) -> np.ndarray:
        """`amount / avg_amount_30d`, capped, 0 where the ratio is undefined."""
        amount = frame["amount"].to_numpy(dtype=np.float64, na_value=np.nan)
        avg = frame["avg_amount_30d"].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(avg > 0, amount / avg, np.nan)
        return np.nan_to_num(np.minimum(ratio, self.AMOUNT_RATIO_CAP), nan=0.0)

    def logit(self, frame: pd.DataFrame) -> np.ndarray:
        """True logit per row of a frame holding `amount` and the point-in-time daily features."""
        missing = [c for c in self.COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"LabelModel.logit needs columns {missing}; join daily features first."
            )

        def col(name: str) -> np.ndarray:
            return np.nan_to_num(frame[name].to_numpy(dtype=np.float64, na_value=np.nan), nan=0.0)

        return (
            self.intercept
            + self.night_share * col("night_txn_share_1d")
            + self.foreign_share * col("foreign_txn_share_1d")
            + self.chargebacks * col("chargeback_count_90d")
            + self.amount_ratio * self.amount_ratio_term(frame)
            + self.distinct_merchants * col("distinct_merchants_1d")
        )

    def probability(self, frame: pd.DataFrame) -> np.ndarray:
        """True fraud probability per row."""
        return _sigmoid(self.logit(frame))

    def blend(self, other: LabelModel, weight: float) -> LabelModel:
        """Coefficients linearly interpolated towards `other` (weight 0 = self, 1 = other)."""

        def mix(name: str) -> float:
            return (1.0 - weight) * getattr(self, name) + weight * getattr(other, name)

        return LabelModel(
            intercept=mix("intercept"),
            night_share=mix("night_share"),
            foreign_share=mix("foreign_share"),
            chargebacks=mix("chargebacks"),
            amount_ratio=mix("amount_ratio"),
            distinct_merchants=mix("distinct_merchants"),
        )


LABEL_MODEL = LabelModel()
# After concept drift night activity stops mattering and merchant hopping drives fraud instead;
# the intercept is lowered so the overall fraud rate stays about the same.
DRIFTED_LABEL_MODEL = LabelModel(
    intercept=-7.2,
    night_share=0.0,
    foreign_share=5.0,
    chargebacks=0.5,
    amount_ratio=0.45,
    distinct_merchants=0.55,
)


def label_model_for(scenario: Scenario) -> LabelModel:
    """The label model in force under a scenario (concept drift blends the two models)."""
    return LABEL_MODEL.blend(DRIFTED_LABEL_MODEL, scenario.concept_drift)


# --------------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------------


def _rng(cfg: GeneratorConfig, stream: int) -> np.random.Generator:
    """One independent, seeded stream per purpose."""
    return np.random.default_rng([cfg.seed, stream])


@dataclass(frozen=True)
class _Profiles:
    """Stable latent traits per customer: they make values autocorrelated across days."""

    spend: np.ndarray  # typical amount of one transaction
    activity: np.ndarray  # expected transactions per day
    risk: np.ndarray  # latent riskiness in [0, 1]
    night: np.ndarray  # probability a transaction happens at night
    foreign: np.ndarray  # probability a transaction is foreign
    channel: np.ndarray  # index into CHANNELS
    chargeback_base: np.ndarray  # chargebacks already on file at the window start


def _profiles(cfg: GeneratorConfig) -> _Profiles:
    """Draw the customer profiles of a config (same for every source)."""
    rng = _rng(cfg, _STREAM_PROFILES)
    n = cfg.n_customers
    risk = rng.beta(1.0, 10.0, n)
    return _Profiles(
        spend=rng.lognormal(np.log(45.0), 0.6, n),
        activity=rng.gamma(2.0, 1.5, n),
        risk=risk,
        night=np.clip(rng.beta(2.0, 20.0, n) + 0.8 * risk, 0.0, 1.0),
        foreign=np.clip(rng.beta(1.0, 25.0, n) + 0.6 * risk, 0.0, 1.0),
        channel=rng.choice(len(CHANNELS), size=n, p=_CHANNEL_PROBS),
        chargeback_base=rng.poisson(4.0 * risk),
    )


def _weekly_factor(first_day: datetime, days: int, amplitude: float) -> np.ndarray:
    """Spend multiplier per day: weekends (1 + a), weekdays (1 - 2a/5), weekly mean 1."""
    weekday = (first_day.weekday() + np.arange(days)) % 7
    return np.where(weekday >= 5, 1.0 + amplitude, 1.0 - 0.4 * amplitude)


def _utc(us: np.ndarray) -> pd.Series:
    """int64 microseconds since the epoch -> datetime64[us, UTC] Series."""
    return pd.Series(us.astype("datetime64[us]")).dt.tz_localize("UTC")


def _epoch_us(ts: pd.Series) -> np.ndarray:
    """Timezone-aware datetime Series -> int64 microseconds since the epoch (no per-row objects)."""
    naive = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive.to_numpy().astype("datetime64[us]").view(np.int64)


def _created(cfg: GeneratorConfig, stream: int, event_us: np.ndarray) -> pd.Series:
    """Ingestion time: a few minutes (1-15) after the event, seeded."""
    jitter = _rng(cfg, stream).integers(60_000_000, 900_000_000, event_us.size)
    return _utc(event_us + jitter)


def _shift_feature(values: np.ndarray, shift_std: np.ndarray, kind: FeatureKind) -> np.ndarray:
    """Shift a column by shift_std (per row) standard deviations, keeping it physically valid."""
    std = float(np.nanstd(values.astype(np.float64)))
    shifted = values.astype(np.float64) + shift_std * (std if std > 0 else 1.0)
    if kind == "int":
        return np.clip(np.rint(shifted), 0, None).astype(np.int64)
    if kind == "share":
        return np.clip(shifted, 0.0, 1.0)
    return np.clip(shifted, 0.0, None)


def apply_scenario(
    frame: pd.DataFrame,
    scenario: Scenario,
    *,
    cfg: GeneratorConfig,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Return a copy of a source frame with the scenario's feature drift applied to its columns."""
    out = frame.copy()
    kinds = {c: k for c, k in ALL_FEATURES.items() if c in out.columns}
    # Position of each row in the window, 0 at the start and 1 at the last stamp.
    progress = (_epoch_us(out[TIMESTAMP_COLUMN]) - cfg.start_us) / (cfg.days * _US_PER_DAY)
    for feature in sorted(set(scenario.covariate_shift) | set(scenario.gradual_drift)):
        if feature not in kinds:
            continue
        shift = scenario.covariate_shift.get(feature, 0.0) + scenario.gradual_drift.get(
            feature, 0.0
        ) * np.clip(progress, 0.0, 1.0)
        out[feature] = _shift_feature(out[feature].to_numpy(), shift, kinds[feature])
    if scenario.new_category is not None and CATEGORY_FEATURE in kinds:
        hit = rng.random(len(out)) < scenario.new_category_share
        out.loc[hit, CATEGORY_FEATURE] = scenario.new_category
    for feature in sorted(scenario.missing_share):
        if feature not in kinds:
            continue
        hit = rng.random(len(out)) < scenario.missing_share[feature]
        if kinds[feature] == "int":
            # Nullable Int64 keeps the parquet type int64 (with nulls) instead of turning float.
            out[feature] = out[feature].astype("Int64")
            out.loc[hit, feature] = pd.NA
        elif kinds[feature] == "string":
            out.loc[hit, feature] = None
        else:
            out.loc[hit, feature] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _ar1_noise(rng: np.random.Generator, n: int, days: int, rho: float, sigma: float) -> np.ndarray:
    """(n, days) AR(1) noise with stationary std sigma; the loop runs over days, not rows."""
    eps = rng.normal(0.0, sigma, (n, days))
    z = np.empty_like(eps)
    z[:, 0] = eps[:, 0]
    scale = np.sqrt(1.0 - rho * rho)
    for d in range(1, days):
        z[:, d] = rho * z[:, d - 1] + scale * eps[:, d]
    return z


def _rolling_avg_amount_30d(
    amount_sum: np.ndarray, count: np.ndarray, prof: _Profiles
) -> np.ndarray:
    """Mean transaction amount over the last 30 days; pre-window days count at their expectation."""
    n, days = count.shape
    # Padding with each customer's expected pre-window history avoids a warm-up period.
    pad_count = np.repeat(prof.activity[:, None], 29, axis=1)
    pad_sum = pad_count * prof.spend[:, None]
    csum = np.cumsum(np.concatenate([np.zeros((n, 1)), pad_sum, amount_sum], axis=1), axis=1)
    ccnt = np.cumsum(np.concatenate([np.zeros((n, 1)), pad_count, count], axis=1), axis=1)
    window_sum = csum[:, 30 : 30 + days] - csum[:, :days]
    window_cnt = ccnt[:, 30 : 30 + days] - ccnt[:, :days]
    return np.where(window_cnt > 0, window_sum / np.maximum(window_cnt, 1e-12), prof.spend[:, None])


def _share(rng: np.random.Generator, count: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Share of a day's transactions with a property of per-customer probability p (0 if none)."""
    hits = rng.binomial(count, np.broadcast_to(p[:, None], count.shape))
    return np.where(count > 0, hits / np.maximum(count, 1), 0.0)


def _base_daily_matrices(cfg: GeneratorConfig, prof: _Profiles) -> dict[str, np.ndarray]:
    """All daily features as (n_customers, days) matrices, before any scenario."""
    rng = _rng(cfg, _STREAM_DAILY)
    n, days = cfg.n_customers, cfg.days
    season = _weekly_factor(cfg.start, days, cfg.scenario.seasonal_amplitude)[None, :]
    sigma = 0.35
    noise = _ar1_noise(rng, n, days, rho=0.6, sigma=sigma)
    count = rng.poisson(prof.activity[:, None] * season * np.exp(noise - 0.5 * sigma * sigma))
    has = count > 0
    # Weekend baskets are bigger too: half of the weekly swing goes into the amount per txn.
    avg = prof.spend[:, None] * (1.0 + 0.5 * (season - 1.0)) * rng.lognormal(-0.045, 0.3, (n, days))
    avg = np.where(has, np.round(avg, 2), 0.0)
    total = avg * count
    # The largest transaction lies between the mean and the sum.
    top = avg + (total - avg) * rng.beta(1.0, 3.0, (n, days))
    top = np.where(count > 1, top, avg)
    merchants = np.where(has, 1 + rng.binomial(np.maximum(count - 1, 0), 0.6), 0)
    # Chargebacks pile up slowly; the window is short next to 90 days, so none expire.
    chargebacks = prof.chargeback_base[:, None] + np.cumsum(
        rng.poisson(0.02 * prof.risk[:, None], (n, days)), axis=1
    )
    channel = np.where(
        rng.random((n, days)) < 0.05,
        rng.choice(len(CHANNELS), size=(n, days), p=_CHANNEL_PROBS),
        prof.channel[:, None],
    )
    return {
        "txn_count_1d": count.astype(np.int64),
        "txn_amount_sum_1d": np.round(total, 2),
        "txn_amount_avg_1d": avg,
        "txn_amount_max_1d": np.round(top, 2),
        "distinct_merchants_1d": merchants.astype(np.int64),
        "night_txn_share_1d": _share(rng, count, prof.night),
        "foreign_txn_share_1d": _share(rng, count, prof.foreign),
        "avg_amount_30d": np.round(_rolling_avg_amount_30d(total, count, prof), 2),
        "chargeback_count_90d": chargebacks.astype(np.int64),
        "preferred_channel": np.asarray(CHANNELS, dtype=object)[channel],
    }


def generate_daily_stats(cfg: GeneratorConfig) -> pd.DataFrame:
    """One row per customer per day, stamped at midnight UTC at the end of the day described."""
    prof = _profiles(cfg)
    mats = _base_daily_matrices(cfg, prof)
    n, days = cfg.n_customers, cfg.days
    # Day-major order: all customers of day 0, then day 1, ... (transpose before ravel).
    stamps = cfg.start_us + (np.arange(days, dtype=np.int64) + 1) * _US_PER_DAY
    event_us = np.repeat(stamps, n)
    frame = pd.DataFrame(
        {
            ENTITY_COLUMN: np.tile(cfg.customer_ids, days),
            TIMESTAMP_COLUMN: _utc(event_us),
            CREATED_COLUMN: _created(cfg, _STREAM_JITTER_DAILY, event_us),
            **{name: m.T.ravel() for name, m in mats.items()},
        }
    )
    return apply_scenario(
        frame, cfg.scenario, cfg=cfg, rng=_rng(cfg, _STREAM_SCENARIO_DAILY)
    ).reset_index(drop=True)


def _hour_weights() -> np.ndarray:
    """Relative activity per hour of day: quiet at night, busy in the day and evening."""
    hours = np.arange(24)
    return 0.15 + np.exp(-0.5 * ((hours - 14.0) / 4.5) ** 2)


def generate_hourly_stats(cfg: GeneratorConfig) -> pd.DataFrame:
    """Sparse rows for active customer-hours, stamped at the end of the hour."""
    prof = _profiles(cfg)
    rng = _rng(cfg, _STREAM_HOURLY)
    days = cfg.days
    season = _weekly_factor(cfg.start, days, cfg.scenario.seasonal_amplitude)[None, :]
    rel_activity = prof.activity / prof.activity.mean()
    rate = cfg.hourly_rows_per_customer_day * rel_activity[:, None] * season
    active_hours = np.minimum(rng.poisson(rate), 24).ravel()  # (n * days,), customer-major
    cell = np.flatnonzero(active_hours)
    k = active_hours[cell]
    # Gumbel top-k: k distinct hours per customer-day, weighted by time of day, without a loop.
    keys = np.log(_hour_weights())[None, :] + rng.gumbel(size=(cell.size, 24))
    order = np.argsort(-keys, axis=1)
    chosen = np.arange(24)[None, :] < k[:, None]
    hour = order[chosen].astype(np.int64)
    cell_rows = np.repeat(cell, k)
    customer_idx, day = np.divmod(cell_rows, days)
    rows = hour.size
    count = 1 + rng.poisson(0.4 * rel_activity[customer_idx])
    amount = np.round(count * prof.spend[customer_idx] * rng.lognormal(-0.08, 0.4, rows), 2)
    failed = rng.poisson(0.03 + 0.6 * prof.risk[customer_idx])
    event_us = cfg.start_us + day * _US_PER_DAY + (hour + 1) * _US_PER_HOUR
    frame = pd.DataFrame(
        {
            ENTITY_COLUMN: cfg.customer_ids[customer_idx],
            TIMESTAMP_COLUMN: event_us,
            "txn_count_1h": count.astype(np.int64),
            "txn_amount_sum_1h": amount,
            "failed_auth_count_1h": failed.astype(np.int64),
        }
    )
    frame = frame.sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable")
    event_us = frame[TIMESTAMP_COLUMN].to_numpy()
    frame = frame.reset_index(drop=True)
    frame[TIMESTAMP_COLUMN] = _utc(event_us)
    frame.insert(2, CREATED_COLUMN, _created(cfg, _STREAM_JITTER_HOURLY, event_us))
    return apply_scenario(
        frame, cfg.scenario, cfg=cfg, rng=_rng(cfg, _STREAM_SCENARIO_HOURLY)
    ).reset_index(drop=True)


def _join_daily(transactions: pd.DataFrame, daily: pd.DataFrame) -> pd.DataFrame:
    """Left join on (customer_id, day midnight); a `_merge` column says which rows matched."""
    keys = transactions[[ENTITY_COLUMN]].copy()
    keys["_day"] = transactions[TIMESTAMP_COLUMN].dt.floor("D")
    features = daily.drop(columns=[CREATED_COLUMN], errors="ignore").rename(
        columns={TIMESTAMP_COLUMN: "_day"}
    )
    joined = keys.merge(
        features, on=[ENTITY_COLUMN, "_day"], how="left", validate="many_to_one", indicator=True
    )
    joined.index = transactions.index
    return joined.drop(columns=[ENTITY_COLUMN, "_day"])


def join_daily_features(transactions: pd.DataFrame, daily: pd.DataFrame) -> pd.DataFrame:
    """Transactions with the daily row stamped at their day's midnight (the point-in-time row)."""
    joined = _join_daily(transactions, daily).drop(columns=["_merge"])
    return pd.concat([transactions, joined], axis=1)


def _draw_transactions(cfg: GeneratorConfig, prof: _Profiles) -> pd.DataFrame:
    """Transactions without labels: who, when, how much, where."""
    rng = _rng(cfg, _STREAM_TRANSACTIONS)
    label_days = cfg.days - 1
    total = round(cfg.n_customers * label_days * cfg.transactions_per_customer_day)
    customer_idx = rng.choice(cfg.n_customers, size=total, p=prof.activity / prof.activity.sum())
    day = rng.integers(1, cfg.days, total)
    offset_us = rng.integers(0, _US_PER_DAY, total)
    amount = np.round(prof.spend[customer_idx] * rng.lognormal(-0.1, 0.7, total), 2)
    category = rng.choice(len(MERCHANT_CATEGORIES), size=total, p=_MERCHANT_PROBS)
    event_us = cfg.start_us + day * _US_PER_DAY + offset_us
    order = np.lexsort((customer_idx, event_us))
    return pd.DataFrame(
        {
            "transaction_id": np.arange(1, total + 1, dtype=np.int64) + 1_000_000,
            ENTITY_COLUMN: cfg.customer_ids[customer_idx[order]],
            TIMESTAMP_COLUMN: _utc(event_us[order]),
            "amount": amount[order],
            "merchant_category": np.asarray(MERCHANT_CATEGORIES, dtype=object)[category[order]],
        }
    )


def generate_transactions(cfg: GeneratorConfig, daily: pd.DataFrame) -> pd.DataFrame:
    """Label events whose is_fraud is drawn from the true logit of the supplied daily frame."""
    prof = _profiles(cfg)
    frame = _draw_transactions(cfg, prof)
    missing = [c for c in DAILY_FEATURES if c not in daily.columns]
    if missing:
        raise ValueError(
            f"generate_transactions: daily frame lacks {missing}; pass customer_daily_stats."
        )
    joined = _join_daily(frame, daily)
    unmatched = (joined["_merge"] != "both").to_numpy()
    if unmatched.any():
        example = frame.loc[unmatched, [ENTITY_COLUMN, TIMESTAMP_COLUMN]].head(3)
        raise ValueError(
            f"generate_transactions: {int(unmatched.sum())} transactions have no daily row at "
            f"their day's midnight (e.g. {example.to_dict('records')}); pass the "
            "customer_daily_stats frame generated from the same config."
        )
    joined = pd.concat([frame, joined.drop(columns=["_merge"])], axis=1)
    prob = label_model_for(cfg.scenario).probability(joined)
    # Labels use their own stream, so concept drift changes them only through the logit.
    u = _rng(cfg, _STREAM_LABELS).random(len(frame))
    frame[LABEL_COLUMN] = (u < prob).astype(np.int64)
    return frame


def generate_sources(cfg: GeneratorConfig) -> dict[str, pd.DataFrame]:
    """All three sources of a config, keyed by source name."""
    daily = generate_daily_stats(cfg)
    return {
        DAILY_SOURCE: daily,
        HOURLY_SOURCE: generate_hourly_stats(cfg),
        TRANSACTIONS_SOURCE: generate_transactions(cfg, daily),
    }


# --------------------------------------------------------------------------------------------
# Writing to the lake
# --------------------------------------------------------------------------------------------


def _arrow_table(df: pd.DataFrame) -> pa.Table:
    """Arrow table with every timestamp column stored as timestamp[us, UTC]."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = []
    for f in table.schema:
        if pa.types.is_timestamp(f.type):
            fields.append(pa.field(f.name, pa.timestamp("us", tz="UTC"), f.nullable))
        else:
            fields.append(f)
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def _write_atomic(table: pa.Table, target: Path) -> Path:
    """Write to a hidden temp file in the same folder, then rename over the target."""
    # A leading dot keeps readers (pyarrow datasets, Feast) from picking up a half-written file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_source(
    df: pd.DataFrame,
    directory: Path,
    *,
    partition_by_day: bool = True,
    timestamp_column: str = TIMESTAMP_COLUMN,
) -> list[Path]:
    """Write a source as one parquet file per UTC day (`part-YYYYMMDD.parquet`); return paths."""
    if timestamp_column not in df.columns:
        raise ValueError(f"write_source: frame has no timestamp column {timestamp_column!r}.")
    ts = df[timestamp_column]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise ValueError(
            f"write_source: column {timestamp_column!r} is {ts.dtype}, expected a timezone-aware "
            "datetime; localize it to UTC first."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if df.empty:
        return []
    if not partition_by_day:
        return [_write_atomic(_arrow_table(df), directory / "part-all.parquet")]
    day = ts.dt.tz_convert("UTC").dt.strftime("%Y%m%d")
    written = []
    for key, part in df.groupby(day.to_numpy(), sort=True):
        written.append(_write_atomic(_arrow_table(part), directory / f"part-{key}.parquet"))
    return written


def write_sources(sources: Mapping[str, pd.DataFrame], lake_dir: Path) -> dict[str, Path]:
    """Write each source under `lake_dir/sources/<name>/`; returns the folder per source."""
    folders: dict[str, Path] = {}
    for name, frame in sources.items():
        folder = Path(lake_dir) / "sources" / name
        write_source(frame, folder)
        folders[name] = folder
    return folders

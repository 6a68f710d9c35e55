"""Training against a real Feast store and a real (SQLite-backed) MLflow registry."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn
from feast import FeatureService, FeatureView, Field, FileSource
from feast.types import Float64

from mlre.data.generator import DAILY_FEATURES, GeneratorConfig, join_daily_features
from mlre.evaluation import compute_metrics, score
from mlre.training import (
    MODEL_FAMILIES,
    PREDICTION_COLUMN,
    TrainingConfig,
    TrainingError,
    build_training_set,
    fingerprint,
    log_training_run,
    split_by_time,
    train,
)

pytestmark = pytest.mark.integration
# Enough customers and days for ~260 fraud labels, ~40 of them in the 3-day test window.
CONFIG = GeneratorConfig(n_customers=1500, start=datetime(2026, 1, 1, tzinfo=UTC), days=20, seed=11)
GHOST_CUSTOMER = 9_999_999  # a key the feature views have never seen
GHOST_ROWS, STALE_ROWS = 7, 5
# transaction_id rides along so every training row can be traced back to its label event.
TRACED = TrainingConfig(passthrough_columns=("merchant_category", "transaction_id"))


def _sources(env) -> tuple[pd.DataFrame, pd.DataFrame]:
    lake = env.settings.lake_dir / "sources"
    return pd.read_parquet(lake / "transactions"), pd.read_parquet(lake / "customer_daily_stats")


def _planted_labels(transactions: pd.DataFrame, daily: pd.DataFrame) -> pd.DataFrame:
    """Real label events plus ones Feast cannot serve: an unknown key, and a stale timestamp."""
    ghost = transactions.sample(GHOST_ROWS, random_state=1).assign(customer_id=GHOST_CUSTOMER)
    # Three days after the last daily row: outside the daily view's two-day TTL.
    stale = transactions.sample(STALE_ROWS, random_state=2).assign(
        event_timestamp=daily["event_timestamp"].max() + pd.Timedelta(days=3)
    )
    planted = pd.concat([ghost, stale]).assign(transaction_id=lambda f: -np.arange(len(f)) - 1)
    return pd.concat([transactions, planted], ignore_index=True)


def test_training_set_counts_dropped_rows_and_is_point_in_time(make_feature_env) -> None:
    env = make_feature_env("local", config=CONFIG)
    transactions, daily = _sources(env)
    labels = _planted_labels(transactions, daily)

    training_set = build_training_set(env.store, labels, TRACED)

    assert training_set.rows_in == len(labels)
    assert training_set.rows_dropped == GHOST_ROWS + STALE_ROWS
    assert training_set.drop_reasons == {"not_served": STALE_ROWS, "no_values": GHOST_ROWS}
    assert len(training_set.frame) == len(transactions)
    assert (training_set.frame["transaction_id"] > 0).all()
    assert {row["customer_id"] for row in training_set.dropped_examples} <= {
        GHOST_CUSTOMER,
        *transactions["customer_id"],
    }
    assert all("reason" in row for row in training_set.dropped_examples)
    assert training_set.frame["customer_id"].dtype == np.int64
    # Label order is kept although Feast reorders rows.
    assert training_set.frame["transaction_id"].tolist() == transactions["transaction_id"].tolist()

    # Point in time: each label sees the daily row stamped at its day's midnight (<= T), exactly
    # what the generator drew the label from, and never the next row (which includes the label).
    daily_features = [name for name in DAILY_FEATURES if name in training_set.feature_names]
    got = training_set.frame.set_index("transaction_id")[daily_features]
    truth = join_daily_features(transactions, daily).set_index("transaction_id")[daily_features]
    pd.testing.assert_frame_equal(got, truth.loc[got.index], check_dtype=False)
    later = daily.assign(event_timestamp=daily["event_timestamp"] - pd.Timedelta(days=1))
    leaked = join_daily_features(transactions, later).set_index("transaction_id")
    differs = got["txn_amount_sum_1d"] != leaked.loc[got.index, "txn_amount_sum_1d"]
    assert differs.mean() > 0.9  # the comparison above can tell the two rows apart


def test_each_family_learns_the_known_relationship(make_feature_env) -> None:
    env = make_feature_env("local", config=CONFIG)
    transactions, _ = _sources(env)
    training_set = build_training_set(env.store, transactions, TrainingConfig())
    aucs: dict[str, float] = {}
    for family in MODEL_FAMILIES:
        config = TrainingConfig(model_family=family)
        split = split_by_time(training_set.frame, config)
        started = time.perf_counter()
        trained = train(split, config)
        elapsed = time.perf_counter() - started
        p = score(trained.pipeline, split.test[trained.features])
        aucs[family] = compute_metrics(split.test["is_fraud"], p, trained.threshold)["roc_auc"]
        print(f"{family}: test ROC AUC {aucs[family]:.3f}, trained in {elapsed:.2f} s")
        assert "merchant_category" not in trained.features
        assert "amount" not in trained.features
    assert min(aucs.values()) > 0.75, aucs


def test_training_errors_name_the_problem(make_feature_env) -> None:
    env = make_feature_env("local", config=CONFIG)
    transactions, _ = _sources(env)
    store = env.store
    with pytest.raises(
        TrainingError, match=r"known services: \['fraud_model_v1', 'fraud_model_v2'"
    ):
        build_training_set(store, transactions, TrainingConfig(feature_service="fraud_model_v9"))
    with pytest.raises(TrainingError, match="label frame is empty"):
        build_training_set(store, transactions.iloc[0:0], TrainingConfig())
    with pytest.raises(TrainingError, match=r"request column\(s\) \['amount'\]"):
        build_training_set(store, transactions.drop(columns=["amount"]), TrainingConfig())
    with pytest.raises(TrainingError, match=r"entity column\(s\) \['customer_id'\]"):
        build_training_set(store, transactions.drop(columns=["customer_id"]), TrainingConfig())
    with pytest.raises(TrainingError, match="single class in 'is_fraud'"):
        build_training_set(store, transactions.assign(is_fraud=0), TrainingConfig())

    # A service pointing at a view the store never registered: named, with what to do.
    ghost_view = FeatureView(
        name="ghost_fv",
        entities=[store.get_entity("customer")],
        ttl=timedelta(days=1),
        schema=[Field(name="ghost_value", dtype=Float64)],
        source=FileSource(path=str(env.settings.lake_dir / "ghost"), timestamp_field="ts"),
    )
    store.apply([FeatureService(name="ghost_service", features=[ghost_view])])
    with pytest.raises(
        TrainingError, match=r"reads feature view 'ghost_fv'.*apply the feature repo"
    ):
        build_training_set(store, transactions, TrainingConfig(feature_service="ghost_service"))

    frame = build_training_set(store, transactions, TrainingConfig()).frame
    with pytest.raises(TrainingError, match="train window is empty"):
        split_by_time(frame, TrainingConfig(validation_days=1, test_days=30))
    last_days = frame["event_timestamp"] >= frame["event_timestamp"].max().floor("D")
    with pytest.raises(TrainingError, match="test window has a single class"):
        split_by_time(frame.assign(is_fraud=frame["is_fraud"].where(~last_days, 0)),
                      TrainingConfig(test_days=1))  # fmt: skip


def test_logged_run_registers_a_version_with_signature_tags_and_reference(
    make_feature_env, tmp_path, monkeypatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    env = make_feature_env("local", config=CONFIG)
    transactions, daily = _sources(env)
    config = TrainingConfig(model_family="logistic_regression")
    training_set = build_training_set(env.store, _planted_labels(transactions, daily), config)
    split = split_by_time(training_set.frame, config)
    trained = train(split, config)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    logged = log_training_run(
        trained,
        training_set,
        split,
        config,
        model_name="fraud-test",
        feast_project=env.store.project,
        tracking_uri=uri,
        artifact_location=str(tmp_path / "artifacts"),
    )
    assert logged.version == "1"
    assert logged.model_uri == "models:/fraud-test/1"
    client = MlflowClient(uri)
    version = client.get_model_version("fraud-test", logged.version)
    assert version.run_id == logged.run_id
    tags = version.tags
    assert tags["feature_service"] == "fraud_model_v1"
    assert tags["features"].split(",") == trained.features
    assert tags["feast_project"] == env.store.project
    assert tags["data_fingerprint"] == fingerprint(training_set.frame)
    assert tags["model_family"] == "logistic_regression"
    assert float(tags["threshold"]) == trained.threshold
    assert tags["rows_dropped"] == str(GHOST_ROWS + STALE_ROWS)
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    run = client.get_run(logged.run_id)
    assert run.data.tags["data_fingerprint"] == tags["data_fingerprint"]
    assert run.data.metrics["rows_dropped"] == GHOST_ROWS + STALE_ROWS
    assert run.data.metrics["test_roc_auc"] > 0.75
    assert run.data.params["model_family"] == "logistic_regression"

    # log_training_run left no global URI behind, so the environment variable decides here.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature is not None
    assert info.signature.inputs.input_names() == trained.features
    requirements = Path(mlflow.pyfunc.get_model_dependencies(logged.model_uri)).read_text()
    assert f"scikit-learn=={sklearn.__version__}" in requirements.splitlines()
    assert f"numpy=={np.__version__}" in requirements.splitlines()
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=logged.run_id, artifact_path="reference", dst_path=str(tmp_path / "ref")
    )
    reference = pd.read_parquet(f"{downloaded}/reference.parquet")
    schema = json.loads((tmp_path / "ref" / "reference" / "schema.json").read_text())
    assert list(reference.columns) == [*trained.features, PREDICTION_COLUMN]
    assert len(reference) == min(5000, len(split.train))
    assert reference[PREDICTION_COLUMN].between(0, 1).all()
    assert schema["preferred_channel"] == "categorical"
    assert schema["night_txn_share_1d"] == schema[PREDICTION_COLUMN] == "numeric"
    assert list((tmp_path / "artifacts").rglob("MLmodel")), "artifacts must stay in tmp_path"

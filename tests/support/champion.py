"""Models on a real MLflow server for the tests that score with them: any scikit-learn model
logged as a version, or a tiny champion trained on a store's point-in-time features."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from mlre.mlflow_uri import global_tracking_uri
from mlre.registry import file_lock, promote

if TYPE_CHECKING:
    from tests.integration.conftest import FeatureEnv

SERVICE = "fraud_model_v1"
INPUTS = [
    "night_txn_share_1d",
    "foreign_txn_share_1d",
    "chargeback_count_90d",
    "distinct_merchants_1d",
    "amount_to_avg_30d_ratio",
]


def log_sklearn_version(
    tracking_uri: str,
    experiment: str,
    model: Any,
    model_name: str,
    *,
    run_tags: dict[str, str] | None = None,
) -> str:
    """Log a scikit-learn model in a new run of `experiment` as the next version of `model_name`
    (skops format, as training logs it); the version number."""
    with global_tracking_uri(tracking_uri):
        mlflow.set_experiment(experiment)
        with mlflow.start_run(tags=run_tags):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name=model_name,
                pip_requirements=["scikit-learn"],
                # SimpleImputer keeps a numpy dtype, which skops does not trust by default.
                skops_trusted_types=["numpy.dtype"],
            )
    return str(info.registered_model_version)


def register_champion(env: FeatureEnv, tracking_uri: str, train: pd.DataFrame) -> str:
    """Train a tiny model on point-in-time features, register and promote it; its name."""
    rows = train[["customer_id", "event_timestamp", "amount", "is_fraud"]]
    service = env.store.get_feature_service(SERVICE)
    features = env.store.get_historical_features(entity_df=rows, features=service).to_df()
    model = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500))
    model.fit(features[INPUTS].astype("float64"), features["is_fraud"])
    name = f"fraud-inference-{uuid.uuid4().hex[:8]}"
    tags = {"feature_service": SERVICE}
    version = log_sklearn_version(tracking_uri, "inference-tests", model, name, run_tags=tags)
    client = MlflowClient(tracking_uri)
    promote(client, name, version, reason="test", run_id="pytest", actor="tester",
            lock=file_lock(env.settings))  # fmt: skip
    return name

"""The prediction log in an S3 bucket (moto's S3 server on 127.0.0.1): the online service and
batch inference write there, the drift, monitoring and canary readers read it back."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlre.data.generator import GeneratorConfig
from mlre.errors import InferenceError
from mlre.prediction_log import prediction_table, read_predictions, write_predictions
from mlre.serving_config import ServingConfig
from mlre.settings import get_settings
from serving.app import create_app
from serving.models import RegistryState
from serving.prediction_logger import PredictionLog
from tests.integration.conftest import FeatureEnv
from tests.support.s3 import S3Server, aws_test_env, running_s3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DAY = datetime(2026, 3, 2, 12, tzinfo=UTC)
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/test"
TINY = GeneratorConfig(n_customers=20, start=datetime(2026, 1, 1, tzinfo=UTC), days=2, seed=3)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server for this module; AWS variables set only while it runs."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_test_env(tmp_path_factory.mktemp("aws")).items():
            patch.setenv(name, value)
        with running_s3() as server:
            yield server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A fresh, empty bucket."""
    name = f"log-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def cloud_settings(s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The process settings point the prediction log at the bucket; yields its URI."""
    uri = s3.uri(bucket, "lake")
    monkeypatch.setenv("MLRE_PREDICTION_LOG_URI", uri)
    get_settings.cache_clear()
    yield uri
    monkeypatch.delenv("MLRE_PREDICTION_LOG_URI")
    get_settings.cache_clear()


def _log_frame(n: int = 6, version: str = "3", route: str = "batch") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": np.arange(1001, 1001 + n, dtype=np.int64),
            "event_timestamp": pd.date_range(DAY - timedelta(hours=n), periods=n, freq="h"),
            "request_id": [f"{route}-{i}" for i in range(n)],
            "score": np.linspace(0.05, 0.95, n),
            "model_name": "fraud",
            "model_version": version,
            "route": route,
            "predicted_at": pd.Timestamp(DAY),
            "amount_to_avg_30d_ratio": np.linspace(0.5, 3.0, n),
        }
    )


def _rows(n: int, prefix: str) -> list[dict]:
    """Rows as the online service queues them: one dict per prediction."""
    frame = _log_frame(n, route="champion")
    return frame.assign(request_id=[f"{prefix}-{i}" for i in range(n)]).to_dict("records")


# --------------------------------------------------------------------------------------------
# The log itself
# --------------------------------------------------------------------------------------------


def test_partition_lands_in_the_bucket_and_reads_back_row_for_row(
    s3: S3Server, bucket: str
) -> None:
    uri = s3.uri(bucket, "lake")
    frame = _log_frame()

    written = write_predictions(frame, uri, "fraud", run_id="run-1", now=DAY)

    key = "lake/predictions/fraud/part-20260302-run-1.parquet"
    assert written == f"s3://{bucket}/{key}"  # no endpoint or region options in what is shown
    assert s3.keys(bucket) == [key]
    expected = prediction_table(frame).to_pandas()
    pd.testing.assert_frame_equal(read_predictions(uri, "fraud"), expected)
    later = read_predictions(uri, "fraud", start=DAY - timedelta(hours=3))
    pd.testing.assert_frame_equal(later, expected.iloc[3:].reset_index(drop=True))


def test_readers_skip_hidden_and_foreign_objects_and_a_rerun_replaces_its_partition(
    s3: S3Server, bucket: str
) -> None:
    uri = s3.uri(bucket)
    write_predictions(_log_frame(6), uri, "fraud", run_id="run-1", now=DAY)
    client = s3.client()
    for key in [".part-20260302-run-2.parquet.ab12.tmp", "part-20260302-run-3.parquet.tmp"]:
        client.put_object(Bucket=bucket, Key=f"predictions/fraud/{key}", Body=b"PAR1 half a file")

    write_predictions(_log_frame(4), uri, "fraud", run_id="run-1", now=DAY)  # the rerun

    assert len(read_predictions(uri, "fraud")) == 4
    assert read_predictions(uri, "other-model").empty


def test_a_missing_bucket_is_named_on_write_and_read(s3: S3Server) -> None:
    absent = f"absent-{uuid.uuid4().hex[:8]}"
    uri = s3.uri(absent, "lake")

    with pytest.raises(InferenceError) as wrote:
        write_predictions(_log_frame(), uri, "fraud", run_id="run-1", now=DAY)
    with pytest.raises(InferenceError) as read:
        read_predictions(uri, "fraud")

    message = str(wrote.value)
    assert f"s3://{absent}/lake/predictions/fraud/part-20260302-run-1.parquet" in message
    assert "bucket exists" in message
    assert "credentials" in message
    assert "endpoint_override" not in message
    assert f"s3://{absent}/lake/predictions/fraud" in str(read.value)
    assert "does not exist" in str(read.value)
    assert absent not in {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


# --------------------------------------------------------------------------------------------
# The online service's buffered log
# --------------------------------------------------------------------------------------------


def test_a_failed_flush_keeps_the_rows_for_the_next_one_and_leaves_no_object(
    s3: S3Server,
) -> None:
    late = f"late-{uuid.uuid4().hex[:8]}"  # the bucket appears only after the first flush
    errors: list[Exception] = []
    log = PredictionLog(
        s3.uri(late), "fraud", flush_rows=10**6, flush_interval_s=3600, on_error=errors.append
    )
    log.append(_rows(5, "first"))

    assert log.flush() == 0
    assert (log.pending, log.rows_written) == (5, 0)
    (error,) = errors
    assert isinstance(error, InferenceError)
    assert f"s3://{late}/predictions/fraud/" in str(error)

    s3.client().create_bucket(Bucket=late)
    assert s3.keys(late) == []  # nothing of the failed attempt is visible
    log.append(_rows(2, "second"))

    assert log.flush() == 7
    assert (log.pending, log.rows_written) == (0, 7)
    (key,) = s3.keys(late)
    assert key.startswith("predictions/fraud/part-")
    assert key.endswith(".parquet")
    back = read_predictions(s3.uri(late), "fraud")
    assert list(back["request_id"]) == [f"first-{i}" for i in range(5)] + [
        f"second-{i}" for i in range(2)
    ]


def test_the_serving_role_may_write_the_log_and_a_denied_write_keeps_the_rows(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.serving_service import serving_policy

    # The IRSA policy infra gives the service, enforced by the S3 API for a user holding it.
    policy = serving_policy([f"arn:aws:s3:::features-{bucket}"], f"arn:aws:s3:::{bucket}", KMS_KEY)
    key_id, secret = s3.user_with_policy(f"serving-{bucket}", policy)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    errors: list[Exception] = []
    sizes = {"flush_rows": 10**6, "flush_interval_s": 3600}
    allowed = PredictionLog(s3.uri(bucket), "fraud", **sizes)
    # A root outside the granted predictions/ prefix: the role may not write there.
    denied = PredictionLog(s3.uri(bucket, "elsewhere"), "fraud", **sizes, on_error=errors.append)
    allowed.append(_rows(3, "ok"))
    denied.append(_rows(2, "no"))

    with s3.enforcing_iam():
        assert allowed.flush() == 3
        assert denied.flush() == 0

    assert denied.pending == 2
    (error,) = errors
    assert isinstance(error, InferenceError)
    assert "Access Denied" in str(error)
    assert "s3:PutObject" in str(error)
    (key,) = s3.keys(bucket)
    assert key.startswith("predictions/fraud/part-")


@pytest.fixture
def feature_env(make_feature_env: Callable[..., FeatureEnv]) -> FeatureEnv:
    """A small applied local store: the service needs one to start."""
    return make_feature_env("local", config=TINY)


def test_service_writes_its_log_to_the_bucket(
    s3: S3Server, bucket: str, feature_env: FeatureEnv
) -> None:
    uri = s3.uri(bucket, "lake")
    name = f"svc-{uuid.uuid4().hex[:8]}"
    settings = feature_env.settings.model_copy(
        update={"prediction_log_uri": uri, "model_name": name}
    )
    config = ServingConfig(poll_interval_s=0.2, log_flush_interval_s=3600, log_flush_rows=10**6)
    instances = [{"customer_id": 1001 + i % 20, "amount": 10.0 + i} for i in range(12)]

    # No champion: the rule answers, and every answer is logged like any other.
    app = create_app(settings, config, store=feature_env.store, read=RegistryState)
    with TestClient(app) as client:
        answered = []
        for start in range(0, len(instances), 4):
            response = client.post("/predict", json={"instances": instances[start : start + 4]})
            assert response.status_code == 200, response.text
            answered += response.json()["predictions"]
        assert read_predictions(uri, name).empty  # buffered until shutdown
    # Leaving the client runs the lifespan's shutdown: the last flush goes to the bucket.

    assert not (feature_env.settings.lake_dir / "predictions").exists()
    (key,) = s3.keys(bucket)
    assert key.startswith(f"lake/predictions/{name}/part-")
    logged = read_predictions(uri, name)
    assert len(logged) == len(answered) == 12
    for column in ["request_id", "customer_id", "score", "model_version", "route"]:
        assert list(logged[column]) == [a[column] for a in answered], column
    assert set(logged["model_name"]) == {name}


# --------------------------------------------------------------------------------------------
# Batch inference writes, drift / monitoring / canary read: each through Settings
# --------------------------------------------------------------------------------------------


def test_batch_inference_writes_and_the_flows_read_the_bucket(
    s3: S3Server, bucket: str, cloud_settings: str, tmp_path: Path
) -> None:
    from flows import canary, drift, inference, monitoring

    model = f"batch-{uuid.uuid4().hex[:8]}"
    scored = _log_frame(8, version="7").assign(model_name=model)
    # What a canary rollout's service replicas logged meanwhile: champion v8, canary v9.
    for version, route, n in [("8", "champion", 3), ("9", "canary", 2)]:
        online = _log_frame(n, version, route).assign(model_name=model)
        write_predictions(online, cloud_settings, model, run_id=f"online-{route}", now=DAY)

    written = inference.write_log.fn(inference.BatchInferenceParams(model_name=model), scored)

    assert written.startswith(f"s3://{bucket}/lake/predictions/{model}/part-")
    assert written.removeprefix(f"s3://{bucket}/") in s3.keys(bucket)
    assert len(s3.keys(bucket)) == 3
    window = {"start": DAY - timedelta(days=1), "end": DAY}
    reference = drift.Reference(model, "7", run_id="r", frame=pd.DataFrame(), schema={})
    current = drift.load_current.fn(drift.CheckDriftParams(model_name=model, **window), reference)
    assert list(current["request_id"]) == list(scored["request_id"])
    wait = canary.CanaryParams(min_predictions=1, poll_s=0.1, step_timeout_s=1)
    champion, arm = canary.wait_for_predictions.fn(model, "9", window["start"], wait)
    assert (len(champion), len(arm)) == (3, 2)
    labels_dir = get_settings().lake_dir / "sources" / f"labels-{model}"
    labels_dir.mkdir(parents=True)
    try:
        labels = scored[["customer_id", "event_timestamp"]].assign(is_fraud=[0, 1] * 4)
        labels.to_parquet(labels_dir / "part-0.parquet")
        params = monitoring.MonitorParams(label_source=f"sources/labels-{model}", **window)
        joined = monitoring.labelled_predictions.fn(params, model, "7")
    finally:
        for path in labels_dir.iterdir():
            path.unlink()
        labels_dir.rmdir()
    assert len(joined) == 8
    assert list(joined["score"]) == list(scored["score"])

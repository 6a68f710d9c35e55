"""The production profile end to end: Redis online store, PostgreSQL SQL registry, the parquet
lake and the prediction log on an S3 API (moto's server on 127.0.0.1), every S3 request checked
against the IAM policy infra gives the flows' pods. Source validation, materialization, the
consistency check, training (Feast's historical retrieval from S3), evaluation, promotion, batch
inference, drift and monitoring all run through the real flows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
import redis

from flows.drift import CheckDriftParams, check_drift
from flows.inference import BatchInferenceParams
from flows.materialize import MaterializeParams, materialize_features
from flows.monitoring import MonitorParams, monitor_performance
from flows.pipeline import PipelineParams, ml_pipeline
from flows.training import TrainParams
from infra.iam import flows_policy
from mlre.data.generator import generate_sources, write_sources
from mlre.errors import SourceDataError
from mlre.features.consistency import read_online
from mlre.features.store import open_store
from mlre.monitoring import MonitoringConfig
from mlre.prediction_log import read_predictions
from mlre.settings import get_settings
from tests.integration.conftest import NOW, _fresh_database, recent_config
from tests.support.s3 import REGION, S3Server, aws_test_env, running_s3

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/test"
CONFIG = recent_config(days=12, n_customers=600, now=NOW)
TRAIN = TrainParams(model_family="random_forest", validation_days=3, test_days=3)


@dataclass(frozen=True)
class Cloud:
    """The bucket, where the lake lives in it, and the S3 server."""

    s3: S3Server
    bucket: str
    lake: str  # s3://bucket/lake: no query, as a FileSource path must be

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.s3.port}", scheme="http", region=REGION
        )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server; every AWS client of this process (pyarrow, s3fs, boto3) is pointed at
    it by AWS_ENDPOINT_URL alone, as nothing but the endpoint differs from real S3."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_test_env(tmp_path_factory.mktemp("aws")).items():
            patch.setenv(name, value)
        with running_s3() as server:
            patch.setenv("AWS_ENDPOINT_URL", server.endpoint)
            yield server


def _land(cloud: Cloud, local: Path) -> None:
    """Generate the demo sources and upload them under the lake prefix."""
    lake = local / "lake"
    write_sources(generate_sources(CONFIG), lake)
    pafs.copy_files(
        str(lake / "sources"),
        f"{cloud.bucket}/lake/sources",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=cloud.filesystem(),
    )


@pytest.fixture
def cloud(
    s3: S3Server,
    tmp_path: Path,
    *,
    prefect_harness: None,
    redis_server,
    postgres_server,
    mlflow_server,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cloud]:
    """The flows' environment as in the cloud; S3 answers only what the flows' role may do."""
    import s3fs

    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().create_bucket(Bucket=f"{bucket}-other")  # a bucket the flows' role may not read
    cloud = Cloud(s3, bucket, f"s3://{bucket}/lake")
    _land(cloud, tmp_path)
    db = 12 + uuid.uuid4().int % 4
    redis.Redis(host=redis_server.host, port=redis_server.port, db=db).flushdb()
    environment = {
        "MLRE_HOME": str(tmp_path / "home"),
        "MLRE_STORE_PROFILE": "production",
        "MLRE_REDIS_CONNECTION_STRING": f"{redis_server.connection_string},db={db}",
        "MLRE_REGISTRY_URI": _fresh_database(postgres_server.sqlalchemy_url),
        "MLRE_OFFLINE_URI": cloud.lake,
        "MLRE_PREDICTION_LOG_URI": cloud.lake,
        "MLRE_MLFLOW_URI": mlflow_server.tracking_uri,
        "MLRE_MODEL_NAME": f"fraud-s3-{uuid.uuid4().hex[:8]}",
    }
    key_id, secret = s3.user_with_policy(
        f"flows-{bucket}", flows_policy([f"arn:aws:s3:::{bucket}"], KMS_KEY)
    )
    for name, value in {
        **environment,
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    get_settings().ensure_dirs()
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs keeps a client per credentials
    with s3.enforcing_iam():
        yield cloud
    s3fs.S3FileSystem.clear_instance_cache()
    get_settings.cache_clear()


def test_production_profile_on_s3_end_to_end(cloud: Cloud) -> None:
    # The weekly pipeline: materialize (sources validated on S3), consistency, train (labels and
    # point-in-time features from S3), evaluate, promote, batch inference (log on S3).
    summary = ml_pipeline(
        PipelineParams(
            materialize=MaterializeParams(end=NOW),
            train=TRAIN,
            inference=BatchInferenceParams(now=NOW),
        )
    )
    assert summary.promoted, summary.gate.reasons
    settings = get_settings()
    store = open_store(settings)
    assert store.config.online_store.type == "redis"
    assert store.config.registry.registry_type == "sql"
    view = store.get_feature_view("customer_daily_stats_fv")
    assert view.batch_source.path.startswith(cloud.lake)
    keys = CONFIG.customer_ids[:50]
    online = read_online(store, view, pd.DataFrame({"customer_id": keys.astype("int64")}))
    assert online["txn_count_1d"].notna().sum() > 40
    staging = settings.tmp_dir / "staging"  # each view's S3 window was copied once, then removed
    assert staging.is_dir()
    assert not any(staging.iterdir())

    log = read_predictions(settings.prediction_log_root, settings.model_name)
    assert len(log) == summary.scored["scored"] > 0
    written = cloud.filesystem().get_file_info(
        pafs.FileSelector(f"{cloud.bucket}/lake/predictions/{settings.model_name}")
    )
    assert any(f.base_name.endswith(".parquet") for f in written)  # on S3, not on a disk

    day = (NOW - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    drift = check_drift(CheckDriftParams(start=day, end=day + timedelta(days=1), now=NOW,
                                         emit_events=False))  # fmt: skip
    assert drift.version == summary.champion_version
    assert drift.reasons  # a verdict with its reasons, read from the log on S3
    monitored = monitor_performance(
        MonitorParams(start=day - timedelta(days=2), end=day + timedelta(days=1), now=NOW,
                      emit_events=False, config=MonitoringConfig(min_rows=50, min_positives=2))
    )  # fmt: skip
    assert monitored.windows, monitored.reasons


def test_bad_source_on_s3_is_refused_before_anything_is_written(cloud: Cloud) -> None:
    frames = generate_sources(recent_config(days=2, n_customers=20, now=NOW))
    daily = frames["customer_daily_stats"].head(5).assign(night_txn_share_1d=40.0)  # percent
    local = Path(get_settings().home) / "bad"
    write_sources({"customer_daily_stats": daily}, local)
    bad_key = f"{cloud.bucket}/lake/sources/customer_daily_stats/late/bad.parquet"
    file = next((local / "sources" / "customer_daily_stats").glob("*.parquet"))
    with cloud.filesystem().open_output_stream(bad_key) as out:
        out.write(file.read_bytes())
    with pytest.raises(OSError, match="ACCESS_DENIED"):  # the policy is really enforced
        cloud.filesystem().get_file_info(pafs.FileSelector(f"{cloud.bucket}-other"))
    state = materialize_features(MaterializeParams(end=NOW), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, SourceDataError), repr(error)
    for named in (f"s3://{bad_key}", "night_txn_share_1d", "outside [0.0, 1.0]"):
        assert named in str(error), str(error)
    store = open_store(get_settings())
    view = store.get_feature_view("customer_daily_stats_fv")
    assert view.most_recent_end_time is None  # nothing materialized, no interval recorded

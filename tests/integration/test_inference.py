"""Batch scoring against a real Feast store and a champion on a real MLflow server; the log."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from mlre.errors import InferenceError
from mlre.inference import ROWS_DROPPED, ROWS_IN, ROWS_SCORED, load_champion, score_frame
from mlre.mlflow_uri import global_tracking_uri
from mlre.prediction_log import read_predictions, write_predictions
from tests.integration.conftest import NOW, FeatureEnv, recent_config
from tests.support.champion import INPUTS, SERVICE, register_champion
from tests.support.mlflow_server import MlflowServer

pytestmark = pytest.mark.integration

LOG_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("score", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("route", pa.string()),
        ("predicted_at", pa.timestamp("us", tz="UTC")),
        *[(name, pa.float64()) for name in INPUTS],
    ]
)


@pytest.fixture(scope="module")
def tracking_uri(mlflow_server: MlflowServer) -> Iterator[str]:
    with global_tracking_uri(mlflow_server.tracking_uri):
        yield mlflow_server.tracking_uri


@pytest.fixture
def env(make_feature_env: Callable[..., FeatureEnv]) -> FeatureEnv:
    return make_feature_env("local", config=recent_config(now=NOW))


def _transactions(env: FeatureEnv) -> pd.DataFrame:
    return pd.read_parquet(env.settings.lake_dir / "sources" / "transactions")


def test_score_a_window_write_and_read_back_the_log(env: FeatureEnv, tracking_uri: str) -> None:
    source = _transactions(env)
    cutoff = source["event_timestamp"].max().normalize()  # the last day is the scoring window
    name = register_champion(env, tracking_uri, source[source["event_timestamp"] < cutoff])
    window = source[source["event_timestamp"] >= cutoff]
    # Three customers nobody knows: Feast has no features for them and drops the rows.
    ghosts = window.head(3).assign(customer_id=np.arange(3, dtype=np.int64) + 10**9)
    entities = pd.concat([window, ghosts], ignore_index=True).sample(frac=1.0, random_state=1)

    model, version, service = load_champion(tracking_uri, name)
    assert (version, service) == ("1", SERVICE)
    scored = score_frame(
        env.store, model, service, entities, model_name=name, model_version=version,
        request_id_column="transaction_id", predicted_at=NOW,
    )  # fmt: skip

    assert scored.attrs[ROWS_IN] == len(window) + 3
    assert scored.attrs[ROWS_DROPPED] == 3
    assert scored.attrs[ROWS_SCORED] == len(window) == len(scored)
    assert scored["score"].between(0, 1).all()
    assert (scored["predicted_at"] == pd.Timestamp(NOW)).all()
    # Rows stay tied to their own request after Feast's reordering.
    by_request = window.set_index(window["transaction_id"].astype(str))
    expected_ts = by_request.loc[scored["request_id"], "event_timestamp"].to_numpy()
    assert (scored["event_timestamp"].to_numpy() == expected_ts).all()
    # A window without traffic (a daily job on a quiet day) scores nothing and fails nothing.
    quiet = score_frame(
        env.store, model, service, entities.iloc[:0], model_name=name, model_version=version,
        request_id_column="transaction_id", predicted_at=NOW,
    )  # fmt: skip
    assert quiet.empty
    assert list(quiet.columns) == list(scored.columns)
    assert (quiet.attrs[ROWS_IN], quiet.attrs[ROWS_SCORED]) == (0, 0)
    labels = by_request.loc[scored["request_id"], "is_fraud"]
    if labels.nunique() == 2:  # a tiny window may hold no fraud at all
        assert roc_auc_score(labels, scored["score"]) > 0.5

    path = write_predictions(scored, env.settings.lake_dir, name, run_id="run-1", now=NOW)

    assert path.parent == env.settings.lake_dir / "predictions" / name
    assert path.name == f"part-{NOW:%Y%m%d}-run-1.parquet"  # the day of the clock it was given
    assert pq.read_schema(path).remove_metadata() == LOG_SCHEMA
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left
    back = read_predictions(env.settings.lake_dir, name)
    assert len(back) == len(scored)
    assert list(back.columns) == LOG_SCHEMA.names
    assert set(back["route"]) == {"batch"}
    assert set(back["model_version"]) == {"1"}
    assert sorted(back["request_id"]) == sorted(window["transaction_id"].astype(str))
    assert str(back["event_timestamp"].dtype) == "datetime64[us, UTC]"
    # A window on event_timestamp: [start, end).
    middle = cutoff + timedelta(hours=12)
    early = read_predictions(env.settings.lake_dir, name, start=cutoff, end=middle)
    late = read_predictions(env.settings.lake_dir, name, start=middle)
    assert len(early) + len(late) == len(back)
    assert (early["event_timestamp"] < middle).all()
    assert (late["event_timestamp"] >= middle).all()


def _log_frame(n: int = 5) -> pd.DataFrame:
    now = pd.Timestamp(NOW)
    return pd.DataFrame(
        {
            "customer_id": np.arange(n, dtype=np.int64),
            "event_timestamp": pd.date_range(now - timedelta(hours=n), periods=n, freq="h"),
            "request_id": [f"r{i}" for i in range(n)],
            "score": np.linspace(0, 1, n),
            "model_name": "fraud",
            "model_version": "3",
            "route": "batch",
            "predicted_at": now,
            "amount_log": np.ones(n),
        }
    )


def test_failed_rename_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_predictions(_log_frame(), tmp_path, "fraud", run_id="good", now=NOW)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(InferenceError, match=rf"folder {tmp_path / 'predictions' / 'fraud'}"):
        write_predictions(_log_frame(50), tmp_path, "fraud", run_id="bad", now=NOW)
    monkeypatch.undo()

    assert [p.name for p in first.parent.iterdir()] == [first.name]  # not even a hidden temp
    assert len(read_predictions(tmp_path, "fraud")) == 5


def test_unwritable_lake_is_named_and_leaves_nothing(tmp_path: Path) -> None:
    # Root ignores chmod, so block the folder the honest way: a file sits where it should be.
    (tmp_path / "predictions").write_text("not a folder")

    with pytest.raises(InferenceError, match=rf"prediction folder {tmp_path / 'predictions'}"):
        write_predictions(_log_frame(), tmp_path, "fraud", run_id="run-1", now=NOW)

    assert [p.name for p in tmp_path.iterdir()] == ["predictions"]
    assert read_predictions(tmp_path, "fraud").empty


def test_readers_ignore_hidden_temp_files(tmp_path: Path) -> None:
    path = write_predictions(_log_frame(), tmp_path, "fraud", run_id="run-1", now=NOW)
    (path.parent / ".part-20260101-run-2.parquet.abc.tmp").write_bytes(b"PAR1 half a file")

    assert len(read_predictions(tmp_path, "fraud")) == 5


def test_missing_log_columns_and_unsafe_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match=r"lacks column\(s\) \['score'\]"):
        write_predictions(
            _log_frame().drop(columns="score"), tmp_path, "fraud", run_id="r", now=NOW
        )
    with pytest.raises(InferenceError, match=r"run_id '\.\./escape'"):
        write_predictions(_log_frame(), tmp_path, "fraud", run_id="../escape", now=NOW)
    assert not (tmp_path / "predictions").exists()


def test_no_champion_is_a_clear_error(tracking_uri: str) -> None:
    name = f"fraud-unpromoted-{uuid.uuid4().hex[:8]}"
    MlflowClient(tracking_uri).create_registered_model(name)

    with pytest.raises(InferenceError, match=rf"{name}.*no champion yet.*ml-pipeline.*promote"):
        load_champion(tracking_uri, name)
    with pytest.raises(InferenceError, match="no champion yet"):
        load_champion(tracking_uri, "never-registered")

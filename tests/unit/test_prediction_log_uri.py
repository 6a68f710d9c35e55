"""Where the prediction log lives: a local folder by default, an object-store URI when set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from mlre.errors import InferenceError
from mlre.prediction_log import (
    _filesystem,
    _partitions,
    predictions_dir,
    read_predictions,
    shown_uri,
    write_predictions,
)
from mlre.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        (Path("/lake"), Path("/lake/predictions/fraud")),
        ("/lake", Path("/lake/predictions/fraud")),
        ("relative/lake", Path("relative/lake/predictions/fraud")),
        ("file:///lake", Path("/lake/predictions/fraud")),
        ("s3://bucket", "s3://bucket/predictions/fraud"),
        ("s3://bucket/", "s3://bucket/predictions/fraud"),
        ("s3://bucket/lake/dev", "s3://bucket/lake/dev/predictions/fraud"),
        (
            "s3://bucket/lake?region=eu-west-1&scheme=http",
            "s3://bucket/lake/predictions/fraud?region=eu-west-1&scheme=http",
        ),
    ],
)
def test_local_roots_stay_paths_and_uris_keep_their_options(
    root: Path | str, expected: Path | str
) -> None:
    folder = predictions_dir(root, "fraud")
    assert folder == expected
    assert type(folder) is type(expected)


@pytest.mark.parametrize("root", [Path("/lake"), "s3://bucket/lake"])
@pytest.mark.parametrize("model", ["../up", ".hidden", "a/b", ""])
def test_unsafe_model_names_are_refused_for_every_root(root: Path | str, model: str) -> None:
    with pytest.raises(InferenceError, match="cannot name a prediction file"):
        predictions_dir(root, model)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://bucket/lake/predictions/m", "s3://bucket/lake/predictions/m"),
        ("s3://bucket/p?region=eu-west-1&secret_key=S3CR3T", "s3://bucket/p"),
        ("s3://AKIA:S3CR3T@bucket/p", "s3://bucket/p"),
        ("s3://AKIA:S3/CR3T@bucket/p?region=x", "s3://bucket/p"),
        ("/local/lake/predictions/m", "/local/lake/predictions/m"),
    ],
)
def test_messages_never_show_keys_or_options(uri: str, shown: str) -> None:
    assert shown_uri(uri) == shown


def test_an_unknown_scheme_is_an_error_naming_the_uri_and_the_setting() -> None:
    with pytest.raises(InferenceError) as caught:
        _filesystem("nosuch://bucket/lake/predictions/m?secret_key=S3CR3T")
    message = str(caught.value)
    assert "nosuch://bucket/lake/predictions/m" in message
    assert "MLRE_PREDICTION_LOG_URI" in message
    assert "S3CR3T" not in message


def test_uris_resolve_to_pyarrow_filesystems() -> None:
    fs, path = _filesystem("s3://bucket/lake/predictions/m?region=eu-west-1")
    assert isinstance(fs, pafs.S3FileSystem)
    assert fs.region == "eu-west-1"
    assert path == "bucket/lake/predictions/m"
    local, where = _filesystem(Path("/lake/predictions/m"))
    assert isinstance(local, pafs.LocalFileSystem)
    assert where == "/lake/predictions/m"


def test_settings_default_to_the_local_lake_and_take_a_uri(tmp_path: Path) -> None:
    local = Settings(home=tmp_path)
    assert local.prediction_log_root == tmp_path / "lake"
    # The feature lake's URI alone does not move the log: writers and readers set one field.
    assert Settings(home=tmp_path, offline_uri="s3://features").prediction_log_root == (
        tmp_path / "lake"
    )
    cloud = Settings(home=tmp_path, prediction_log_uri="s3://logs/dev?region=eu-west-1")
    assert cloud.prediction_log_root == "s3://logs/dev?region=eu-west-1"


def test_settings_read_the_uri_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLRE_PREDICTION_LOG_URI", "s3://logs")
    assert Settings(home=tmp_path).prediction_log_root == "s3://logs"


def _frame(n: int = 3) -> pd.DataFrame:
    now = pd.Timestamp("2026-03-02T12:00:00Z")
    return pd.DataFrame(
        {
            "customer_id": np.arange(n, dtype=np.int64),
            "event_timestamp": [now] * n,
            "request_id": [f"r{i}" for i in range(n)],
            "score": np.linspace(0, 1, n),
            "model_name": "fraud",
            "model_version": "1",
            "route": "batch",
            "predicted_at": now,
        }
    )


def test_a_string_root_writes_the_same_layout_as_a_path(tmp_path: Path) -> None:
    path = write_predictions(
        _frame(), str(tmp_path), "fraud", run_id="r1", now=_frame()["predicted_at"][0]
    )
    assert path == tmp_path / "predictions" / "fraud" / "part-20260302-r1.parquet"
    assert len(read_predictions(tmp_path, "fraud")) == 3
    assert len(read_predictions(f"file://{tmp_path}", "fraud")) == 3


def test_listing_keeps_only_partitions(tmp_path: Path) -> None:
    folder = tmp_path / "predictions" / "fraud"
    folder.mkdir(parents=True)
    for name in ["part-1.parquet", "part-2.parquet", ".part-3.parquet.ab12.tmp", "notes.txt"]:
        (folder / name).write_bytes(b"")
    (folder / "part-4.parquet").mkdir()

    found = _partitions(pafs.LocalFileSystem(), str(folder), str(folder))

    assert [Path(p).name for p in found] == ["part-1.parquet", "part-2.parquet"]


def test_a_missing_local_folder_is_an_empty_log(tmp_path: Path) -> None:
    assert read_predictions(tmp_path / "nowhere", "fraud").empty

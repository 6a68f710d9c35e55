"""Batch inference writing its prediction-log partition into a full disk or a read-only lake.

The write runs in a child process that meets a real refusal from the kernel: a file-size limit
(EFBIG, a disk full for that process) or a read-only mount of the lake (EROFS; EACCES through
chmod when not root). Readers (the drift and monitoring flows read through `read_predictions`)
must see no partial partition, earlier partitions byte for byte as they were, and a re-run once
the disk has room must land the partition.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mlre.prediction_log import predictions_dir, read_predictions, write_predictions
from tests.reliability.conftest import score_last_day
from tests.reliability.harness import Platform, assert_message, assert_unchanged, capture
from tests.support.child import read_only_unsupported, run_in_child

pytestmark = pytest.mark.integration
WRITE = "mlre.prediction_log:write_predictions"
# Far below one partition of the platform's scored day, above what the child writes elsewhere.
FILE_SIZE_LIMIT = 4096


@pytest.fixture(scope="module")
def scored(platform_exported: Platform) -> pd.DataFrame:
    """A scored day of transactions: what the batch-inference flow hands its write step."""
    return score_last_day(platform_exported.settings, platform_exported.tracking_uri)


def _write_in_child(
    platform: Platform, scored: pd.DataFrame, workdir: Path, run_id: str, **fault: object
) -> tuple[str | None, str]:
    kwargs = {
        "frame": scored, "lake_dir": platform.lake_dir, "model_name": platform.model_name,
        "run_id": run_id,
    }  # fmt: skip
    outcome = run_in_child(WRITE, kwargs, workdir, **fault)  # type: ignore[arg-type]
    return outcome.error_type, outcome.message


def _rerun_lands(platform: Platform, scored: pd.DataFrame, run_id: str) -> None:
    """Once the disk has room, the same write lands and readers see every row of it."""
    rows_before = len(read_predictions(platform.lake_dir, platform.model_name))
    path = write_predictions(scored, platform.lake_dir, platform.model_name, run_id=run_id)
    try:
        assert len(read_predictions(platform.lake_dir, platform.model_name)) == rows_before + len(
            scored
        )
    finally:
        path.unlink()  # the corpus platform's log stays as the other cases know it


@pytest.mark.fault("disk full during batch inference")
def test_disk_full_write_fails_clearly_and_leaves_no_partial_partition(
    platform: Platform, scored: pd.DataFrame, tmp_path: Path
) -> None:
    folder = predictions_dir(platform.lake_dir, platform.model_name)
    before = capture(platform)

    error, message = _write_in_child(
        platform, scored, tmp_path, "disk-full", file_size_limit=FILE_SIZE_LIMIT
    )

    assert error == "mlre.errors.InferenceError", message
    assert_message(message, names=[str(folder), "File too large"], fix="free space")
    assert_unchanged(before, capture(platform))  # not even a hidden temp file is left
    _rerun_lands(platform, scored, "disk-full")


@pytest.mark.fault("read-only lake during batch inference")
def test_read_only_lake_write_fails_clearly_and_leaves_earlier_partitions(
    platform: Platform, scored: pd.DataFrame, tmp_path: Path
) -> None:
    if reason := read_only_unsupported():
        pytest.skip(reason)
    folder = predictions_dir(platform.lake_dir, platform.model_name)
    before = capture(platform)

    error, message = _write_in_child(
        platform, scored, tmp_path, "read-only", read_only=platform.lake_dir
    )

    assert error == "mlre.errors.InferenceError", message
    # Root gets a read-only mount (EROFS); anyone else a chmod-ed lake (EACCES).
    refusal = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert_message(message, names=[str(folder), refusal], fix="writable")
    assert_unchanged(before, capture(platform))
    _rerun_lands(platform, scored, "read-only")

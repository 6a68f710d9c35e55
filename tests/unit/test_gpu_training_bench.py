"""The GPU-training benchmark's pure parts: the record (ratio, target, met, the "not available"
path), the CUDA pre-check and probe verdict, and the 30 features built from the generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import gpu_training as bench

pytestmark = pytest.mark.unit

ROWS = 2_000
SEED = 7
RAN: dict[str, Any] = {"rows": 5_000_000, "seed": SEED}


def side(fit_s: float, auc: float) -> dict[str, Any]:
    """The figures a side's child reports, reduced to what the record reads."""
    return {"available": True, "fit_s": fit_s, "test_auc": auc, "rows_per_s": 4e6 / fit_s}


@pytest.fixture(scope="module")
def frame() -> Any:
    return bench.generate_frame(ROWS, SEED)


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


def test_no_gpu_records_cpu_side_and_not_available_never_a_number() -> None:
    cpu = side(600.0, 0.9)
    record = bench.build_record(RAN, cpu, {"available": False, "reason": "CPU-only build"})
    assert record["cpu"] == cpu
    assert record["gpu"] == "not available"
    assert record["gpu_not_available_reason"] == "CPU-only build"
    assert record["ratio"] is None
    assert record["auc_difference"] is None
    assert record["met"] is None
    assert record["status"].startswith("not measured")
    assert "CPU-only build" in record["status"]
    json.dumps(record)  # plain JSON types only


@pytest.mark.parametrize(
    ("cpu_s", "gpu_s", "cpu_auc", "gpu_auc", "ratio", "met", "status_has"),
    [
        (600.0, 60.0, 0.9000, 0.8990, 10.0, True, "met"),
        (600.0, 120.0, 0.9000, 0.9000, 5.0, True, "met"),  # exactly the target
        (600.0, 150.0, 0.9000, 0.9000, 4.0, False, "speed-up 4.0x < 5.0x"),
        (600.0, 60.0, 0.9000, 0.8900, 10.0, False, "AUC difference 0.01 > 0.005"),
        (600.0, 300.0, 0.9000, 0.8000, 2.0, False, "speed-up 2.0x"),
    ],
)
def test_ratio_and_target(
    *,
    cpu_s: float,
    gpu_s: float,
    cpu_auc: float,
    gpu_auc: float,
    ratio: float,
    met: bool,
    status_has: str,
) -> None:
    record = bench.build_record(RAN, side(cpu_s, cpu_auc), side(gpu_s, gpu_auc))
    assert record["ratio"] == ratio
    assert record["auc_difference"] == pytest.approx(abs(cpu_auc - gpu_auc))
    assert record["met"] is met
    assert status_has in record["status"]
    assert record["status"].startswith("met" if met else "not met")
    assert record["gpu_not_available_reason"] is None
    assert record["gpu"]["fit_s"] == gpu_s


def test_below_target_size_ratio_is_kept_but_met_is_not_claimed() -> None:
    record = bench.build_record({"rows": 1_000_000}, side(100.0, 0.9), side(10.0, 0.9))
    assert record["ratio"] == 10.0
    assert record["met"] is None
    assert "not measured at the target size" in record["status"]


def test_record_carries_the_target() -> None:
    record = bench.build_record(RAN, side(1.0, 0.9), {"available": False, "reason": "x"})
    assert record["target"] == {
        "min_speedup": 5.0,
        "max_auc_difference": 0.005,
        "at_rows": 5_000_000,
    }


# --------------------------------------------------------------------------------------------
# Is CUDA usable?
# --------------------------------------------------------------------------------------------


def test_cpu_only_build_is_refused_before_trying() -> None:
    reason = bench.cuda_precheck({"USE_CUDA": False}, ["xgboost-cpu==3.2.0"])
    assert reason is not None
    assert "xgboost-cpu==3.2.0" in reason
    assert "USE_CUDA=False" in reason
    assert bench.cuda_precheck({"USE_CUDA": True}, ["xgboost==3.2.0"]) is None


def test_silent_fallback_to_cpu_is_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    # XGBoost answers device="cuda" without a GPU by warning and training on the CPU.
    warning = "No visible GPU is found, setting device to CPU."
    monkeypatch.setattr(bench, "warm_up", lambda device, seed, n_jobs: ("cpu", 0.1, [warning]))
    result = bench.run_side("cuda", Path("never-read"), SEED, 1)
    assert result["available"] is False
    assert "ran on 'cpu'" in result["reason"]
    assert warning in result["reason"]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_generator_writes_exactly_the_rows_asked_for(frame: Any) -> None:
    assert len(frame) == ROWS
    assert set(frame["is_fraud"].unique()) <= {0, 1}


def test_features_shape_dtype_and_values(frame: Any) -> None:
    x = bench.build_features(frame, SEED)
    assert x.shape == (ROWS, 30) == (ROWS, len(bench.FEATURE_NAMES))
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    names = list(bench.FEATURE_NAMES)
    for column in bench.BASE_COLUMNS:  # the generator's numerics, unchanged
        np.testing.assert_array_equal(x[:, names.index(column)], frame[column].to_numpy(np.float32))
    assert set(np.unique(x[:, names.index("hour_of_day")])) <= set(range(24))
    assert set(np.unique(x[:, names.index("day_of_week")])) <= set(range(7))
    assert set(np.unique(x[:, names.index("merchant_category_code")])) <= set(range(7))
    mixes = x[:, [names.index(c) for c in bench.MIX_COLUMNS]]
    assert (np.abs(mixes) <= 1).all()
    assert mixes.std(axis=0).min() > 0


def test_features_are_deterministic_and_mixes_follow_the_seed(frame: Any) -> None:
    first, again = bench.build_features(frame, SEED), bench.build_features(frame, SEED)
    np.testing.assert_array_equal(first, again)
    other = bench.build_features(frame, SEED + 1)
    fixed = len(bench.FEATURE_NAMES) - len(bench.MIX_COLUMNS)
    np.testing.assert_array_equal(first[:, :fixed], other[:, :fixed])
    assert not np.array_equal(first[:, fixed:], other[:, fixed:])


def test_split_is_seeded_disjoint_and_complete() -> None:
    train, test = bench.split_indices(ROWS, SEED)
    assert test.size == ROWS * bench.TEST_FRACTION
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(ROWS))
    again = bench.split_indices(ROWS, SEED)
    np.testing.assert_array_equal(test, again[1])
    assert not np.array_equal(test, bench.split_indices(ROWS, SEED + 1)[1])


def test_prepared_data_set_round_trips(tmp_path: Path) -> None:
    manifest = bench.prepare_data(ROWS, SEED, tmp_path)
    assert manifest["train_rows"] + manifest["test_rows"] == ROWS
    x_train = np.load(tmp_path / "x_train.npy")
    y_test = np.load(tmp_path / "y_test.npy")
    assert x_train.shape == (manifest["train_rows"], 30)
    assert x_train.dtype == np.float32
    assert y_test.shape == (manifest["test_rows"],)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest

"""The scale-out benchmark's pure parts: Redis snapshots compared key by key, the worker RSS
summary, the 1-partition overhead and the targets' `met` values."""

from __future__ import annotations

from typing import Any

import psutil
import pytest

from bench import scale_out as bench

pytestmark = pytest.mark.unit

STATUS = "Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t  524288 kB\nVmRSS:\t  262144 kB\n"


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------


def test_row_digest_ignores_field_order_but_not_values() -> None:
    one = bench.row_digest({b"_ts:v": b"\x01", b"f1": b"a"})
    assert one == bench.row_digest({b"f1": b"a", b"_ts:v": b"\x01"})
    assert one != bench.row_digest({b"_ts:v": b"\x01", b"f1": b"b"})
    assert one != bench.row_digest({b"_ts:v": b"\x01"})


def test_row_digest_keeps_name_and_value_boundaries() -> None:
    assert bench.row_digest({b"ab": b"c"}) != bench.row_digest({b"a": b"bc"})


def test_identical_snapshots_compare_identical() -> None:
    snapshot = {b"k1": b"d1", b"k2": b"d2"}
    result = bench.compare_snapshots(snapshot, dict(snapshot))
    assert result["identical"] is True
    assert (result["missing"], result["extra"], result["different"]) == (0, 0, 0)
    assert result["examples"] == {}


def test_every_kind_of_difference_is_counted_with_examples() -> None:
    reference = {b"a": b"1", b"b": b"2", b"c": b"3"}
    other = {b"a": b"1", b"b": b"X", b"d": b"4"}
    result = bench.compare_snapshots(reference, other)
    assert result["identical"] is False
    assert (result["keys_reference"], result["keys_other"]) == (3, 3)
    assert (result["missing"], result["extra"], result["different"]) == (1, 1, 1)
    assert result["examples"] == {
        "missing": [b"c".hex()],
        "extra": [b"d".hex()],
        "different": [b"b".hex()],
    }


def test_a_store_missing_keys_is_not_identical() -> None:
    result = bench.compare_snapshots({b"a": b"1", b"b": b"2"}, {b"a": b"1"})
    assert result["identical"] is False
    assert result["missing"] == 1


# --------------------------------------------------------------------------------------------
# RSS samples
# --------------------------------------------------------------------------------------------


def test_status_fields_are_read_in_kb() -> None:
    assert bench.status_kb(STATUS, "VmHWM") == 524288
    assert bench.status_kb(STATUS, "VmRSS") == 262144
    assert bench.status_kb(STATUS, "VmSwap") is None


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        (
            ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(7)"],
            "worker",
        ),
        (
            ["python", "-c", "from multiprocessing.resource_tracker import main;main(8)"],
            "resource-tracker",
        ),
        (["redis-server", "--port", "6379"], "other"),
        ([], "other"),
    ],
)
def test_process_roles(cmdline: list[str], role: str) -> None:
    assert bench.process_role(cmdline) == role


def test_peaks_summary_lists_each_worker_and_the_highest() -> None:
    peaks = [
        bench.ProcessPeak(pid=30, role="worker", peak_kb=700 * 1024),
        bench.ProcessPeak(pid=20, role="worker", peak_kb=512 * 1024),
        bench.ProcessPeak(pid=40, role="resource-tracker", peak_kb=20 * 1024),
    ]
    summary = bench.summarise_peaks(peaks)
    assert summary["workers"] == 2
    assert summary["worker_peak_rss_mb"] == [512.0, 700.0]  # by pid
    assert summary["max_worker_peak_rss_mb"] == 700.0
    assert summary["other_processes"] == [{"role": "resource-tracker", "peak_rss_mb": 20.0}]


def test_no_workers_means_no_worker_peak() -> None:
    summary = bench.summarise_peaks([])
    assert summary["workers"] == 0
    assert summary["max_worker_peak_rss_mb"] is None


# --------------------------------------------------------------------------------------------
# Overhead and targets
# --------------------------------------------------------------------------------------------


def test_overhead_is_median_minus_the_baselines_median() -> None:
    runs = {"in-process": [3.0, 1.0, 2.0], "dask-local": [30.0, 28.0, 40.0], "dask-scheduler": []}
    assert bench.median_overhead(runs) == {"dask-local": 28.0, "dask-scheduler": None}


def test_overhead_without_a_baseline_is_not_measured() -> None:
    assert bench.median_overhead({"dask-local": [30.0]}) == {"dask-local": None}


def _results(local_rps: float, worker_mb: float) -> dict[str, Any]:
    rss = {"max_worker_peak_rss_mb": worker_mb}
    return {
        "in-process": {"rows_per_s": 100_000},
        "dask-local": {"rows_per_s": local_rps, "rss": rss},
        "dask-scheduler": {"rows_per_s": 190_000, "rss": rss},
    }


def _same(identical: bool, keys: int) -> dict[str, Any]:
    return {"identical": identical, "keys_other": keys}


def test_targets_met_and_missed() -> None:
    targets = bench.evaluate(
        _results(local_rps=150_000, worker_mb=600.0),
        {"dask-local": _same(True, 1_000), "dask-scheduler": _same(True, 1_000)},
        {"dask-local": 25.0, "dask-scheduler": 0.8},
        keys=1_000,
    )
    assert targets["throughput_ratio_dask_local"] == {
        "target": ">= 1.6",
        "value": 1.5,
        "met": False,
    }
    assert targets["throughput_ratio_dask_scheduler"]["met"] is True
    assert targets["worker_peak_rss_dask_local_mb"]["met"] is True
    assert targets["identical_dask_local"]["met"] is True
    assert targets["overhead_1_partition_dask_local_s"]["met"] is False
    assert targets["overhead_1_partition_dask_scheduler_s"]["met"] is True


def test_identical_needs_every_key_in_the_store() -> None:
    targets = bench.evaluate(
        _results(local_rps=170_000, worker_mb=2_000.0),
        {"dask-local": _same(True, 999), "dask-scheduler": _same(False, 1_000)},
        {},
        keys=1_000,
    )
    assert targets["identical_dask_local"]["met"] is False  # both stores missed a key
    assert targets["identical_dask_scheduler"]["met"] is False
    assert targets["worker_peak_rss_dask_local_mb"]["met"] is False


def test_a_candidate_that_did_not_run_is_not_measured() -> None:
    targets = bench.evaluate({"in-process": {"rows_per_s": 100_000}}, {}, {}, keys=1_000)
    assert all(t["met"] is None for t in targets.values())
    assert len(targets) == 8


def test_only_the_issues_size_writes_the_committed_results() -> None:
    assert bench.results_path(bench.KEYS, bench.DAYS) == bench.RESULTS
    assert bench.results_path(20_000, 10).name == "results-20000x10.json"


def test_cores_busy_counts_every_state_but_idle_and_iowait() -> None:
    kind = type(psutil.cpu_times())
    before = kind(*[0.0] * len(kind._fields))
    spent = dict.fromkeys(kind._fields, 0.0) | {"user": 7.0, "system": 1.0, "idle": 1.5}
    spent["iowait"] = 0.5
    after = kind(**spent)
    assert bench.machine_cores_busy(before, after, seconds=5.0) == 1.6


def test_the_ratio_ceiling_is_the_cores_over_the_baselines_busy_cores() -> None:
    assert bench.ratio_ceiling({"machine_cores_busy": 1.25}, cores=2) == 1.6
    assert bench.ratio_ceiling({}, cores=2) is None

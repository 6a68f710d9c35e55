"""Helpers of the multi-worker service: the metrics directory, gauge modes, dead workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlre.serving_config import ServingConfig
from serving.__main__ import fresh_dir, metrics_dir
from serving.metrics import (
    GAUGE_MODES,
    METRIC_PREFIX,
    Metrics,
    forget_dead_workers,
    live_gauge_pids,
)

pytestmark = pytest.mark.unit


def test_workers_come_from_the_environment_and_are_at_least_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLRE_SERVING_WORKERS", raising=False)
    assert ServingConfig().workers == 1
    monkeypatch.setenv("MLRE_SERVING_WORKERS", "4")
    assert ServingConfig().workers == 4
    monkeypatch.setenv("MLRE_SERVING_WORKERS", "0")
    with pytest.raises(ValidationError, match="workers"):
        ServingConfig()


def test_metrics_dir_is_the_parents_own_and_starts_empty(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    path = metrics_dir(run_dir, 4242)
    assert path.parent == run_dir
    assert "4242" in path.name
    assert metrics_dir(run_dir, 4243) != path  # two services on one home never share files
    path.mkdir(parents=True)
    (path / "counter_17.db").write_bytes(b"left by an earlier process with this pid")
    assert fresh_dir(path) == path
    assert list(path.iterdir()) == []


def test_every_gauge_has_a_live_mode_and_every_series_the_services_prefix() -> None:
    families = list(Metrics().registry.collect())
    gauges = {family.name for family in families if family.type == "gauge"}
    assert gauges == set(GAUGE_MODES)
    # A stopped worker's state must leave /metrics: only live modes (mark_process_dead).
    assert all(mode.startswith("live") for mode in GAUGE_MODES.values())
    assert all(family.name.startswith(METRIC_PREFIX) for family in families)


def test_live_gauge_pids_reads_prometheus_client_file_names() -> None:
    names = [
        "gauge_liveall_101.db",
        "gauge_livesum_102.db",
        "gauge_all_103.db",  # not live: never removed
        "counter_104.db",
        "histogram_105.db",
        "gauge_liveall_106.db.tmp",
    ]
    assert live_gauge_pids(names) == {101, 102}


def test_forget_dead_workers_drops_only_dead_workers_live_gauges(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: its pid names no process now
    dead, alive = ended.pid, os.getpid()
    for name in (f"gauge_liveall_{dead}.db", f"counter_{dead}.db", f"gauge_livesum_{alive}.db"):
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(str(tmp_path)) == {dead}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"gauge_livesum_{alive}.db"]  # its counts stay in the sums
    )

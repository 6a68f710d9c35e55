"""The service's Prometheus metrics: one registry per app, the names the canary flow reads.

With several worker processes (`MLRE_SERVING_WORKERS` > 1) prometheus_client runs in its
multiprocess mode: every worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set by
`python -m serving` before anything imported prometheus_client) and /metrics reads them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from mlre import canary
from mlre.errors import ConfigError

if TYPE_CHECKING:
    from serving.models import ModelSet

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Causes counted against a served model version (FeatureUnavailable's causes and the model's own).
VERSION_ERROR_CAUSES = (
    "feature_timeout", "feature_store", "circuit_open", "feature_transform", "model_error",
)  # fmt: skip
ROUTES = ("champion", "canary", "fallback")
METRIC_PREFIX = "mlre_serving_"  # every name below; other libraries' series are not served
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
BREAKER_METRIC = "mlre_serving_feature_store_circuit_open"
LOG_PENDING_METRIC = "mlre_serving_log_pending_rows"
# How /metrics combines each gauge over the workers (multiprocess mode only; one process: no
# effect). Live modes only: a stopped worker's state vanishes with it (mark_process_dead). The
# served state is per worker (a `pid` label), so "switched" can mean every worker; the canary's
# queries aggregate it per instance (mlre.canary).
GAUGE_MODES = {
    canary.SHARE_METRIC: "liveall",
    canary.MODEL_INFO_METRIC: "liveall",
    BREAKER_METRIC: "livemax",  # open in any worker
    LOG_PENDING_METRIC: "livesum",  # rows every live worker still holds
}
# prometheus_client's file of a live gauge mode: gauge_<mode>_<pid>.db
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.predictions = Counter(
            canary.REQUESTS_METRIC, "Predictions served", ["model_version", "route"], registry=r
        )
        self.latency = Histogram(
            canary.LATENCY_METRIC,
            "Request latency by the model version and route that answered",
            ["model_version", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.feature_latency = Histogram(
            "mlre_serving_feature_fetch_seconds",
            "Feast online read latency",
            ["feature_service"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            canary.ERRORS_METRIC, "Errors by cause", ["cause", "model_version"], registry=r
        )
        self.fallbacks = Counter(
            "mlre_serving_fallbacks", "Predictions answered by a fallback", ["cause"], registry=r
        )
        self.share = Gauge(
            canary.SHARE_METRIC,
            "Canary share being served",
            registry=r,
            multiprocess_mode=GAUGE_MODES[canary.SHARE_METRIC],
        )
        self.model_info = Gauge(
            canary.MODEL_INFO_METRIC,
            "Loaded model per slot",
            ["slot", "version"],
            registry=r,
            multiprocess_mode=GAUGE_MODES[canary.MODEL_INFO_METRIC],
        )
        self.reloads = Counter("mlre_serving_model_swaps", "Model set swaps", registry=r)
        self.batch_instances = Histogram(
            "mlre_serving_batch_instances",
            "Instances scored together in one micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self._slots: set[tuple[str, str]] = set()
        self.breaker_open = Gauge(
            BREAKER_METRIC,
            "1 while the feature-store circuit breaker refuses reads (open or probing)",
            registry=r,
            multiprocess_mode=GAUGE_MODES[BREAKER_METRIC],
        )
        self.log_pending = Gauge(
            LOG_PENDING_METRIC,
            "Prediction-log rows not yet written",
            registry=r,
            multiprocess_mode=GAUGE_MODES[LOG_PENDING_METRIC],
        )

    def published(self, models: ModelSet) -> None:
        """Reflect a swapped model set (the canary flow waits for these values)."""
        slots = set(models.slots().items())
        # Zero the old pairs instead of clear(): prometheus_client's multiprocess mode (which
        # Feast's import may switch on) does not implement clear().
        for slot, version in self._slots - slots:
            self.model_info.labels(slot=slot, version=version).set(0)
        for slot, version in slots:
            self.model_info.labels(slot=slot, version=version).set(1)
            # Series at 0 from the moment a version is served: Prometheus' increase() needs two
            # samples, so a counter born with the first error would hide that error from rate
            # queries (the SLO rules, the canary judging every replica).
            for cause in VERSION_ERROR_CAUSES:
                self.errors.labels(cause=cause, model_version=version)
            for route in ROUTES:
                self.predictions.labels(model_version=version, route=route)
        self._slots = slots
        self.share.set(models.canary_share)
        self.reloads.inc()


# --------------------------------------------------------------------------------------------
# Several worker processes
# --------------------------------------------------------------------------------------------


class _ServiceSeries(Collector):
    """The service's series of every worker, from the multiprocess files (Feast's import
    registers its own metrics there too; they are not the service's)."""

    def __init__(self, path: str) -> None:
        self._files = MultiProcessCollector(None, path=path)

    def collect(self) -> Iterable[Metric]:
        return [m for m in self._files.collect() if m.name.startswith(METRIC_PREFIX)]


def shared_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR of this worker; a ConfigError if `python -m serving` did not
    set it (the workers would each count alone)."""
    path = os.environ.get(MULTIPROC_DIR_ENV, "")
    if not Path(path).is_dir():
        raise ConfigError(
            f"MLRE_SERVING_WORKERS > 1 needs {MULTIPROC_DIR_ENV} set to an existing directory "
            f"before prometheus_client is imported (it is {path!r}); start the service with "
            "`python -m serving`, which creates one."
        )
    return path


def shared_exposition(path: str) -> bytes:
    """/metrics text of all workers: counters and histograms summed, gauges by GAUGE_MODES."""
    registry = CollectorRegistry()
    registry.register(_ServiceSeries(path))
    return generate_latest(registry)


def live_gauge_pids(file_names: Iterable[str]) -> set[int]:
    """Pids owning live-gauge files among these names (prometheus_client's file naming)."""
    return {int(m.group(1)) for name in file_names if (m := _LIVE_GAUGE_FILE.fullmatch(name))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def forget_dead_workers(path: str) -> set[int]:
    """Drop the live gauges of workers that died without their lifespan exit (SIGKILL, OOM);
    uvicorn replaces them under new pids, and their stale state (a model nothing serves any
    more) would keep the canary waiting. Returns the pids forgotten."""
    dead = {pid for pid in live_gauge_pids(os.listdir(path)) if not _alive(pid)}
    for pid in dead:
        mark_process_dead(pid, path)
    return dead


def worker_stopped(path: str) -> None:
    """This worker's live gauges leave /metrics (its counters stay in the sums)."""
    mark_process_dead(os.getpid(), path)

"""The service's Prometheus metrics: one registry per app, the names the canary flow reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mlre import canary

if TYPE_CHECKING:
    from serving.models import ModelSet

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Causes counted against a served model version (FeatureUnavailable's causes and the model's own).
VERSION_ERROR_CAUSES = (
    "feature_timeout", "feature_store", "circuit_open", "feature_transform", "model_error",
)  # fmt: skip
ROUTES = ("champion", "canary", "fallback")


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
        self.share = Gauge(canary.SHARE_METRIC, "Canary share being served", registry=r)
        self.model_info = Gauge(
            canary.MODEL_INFO_METRIC, "Loaded model per slot", ["slot", "version"], registry=r
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
            "mlre_serving_feature_store_circuit_open",
            "1 while the feature-store circuit breaker refuses reads (open or probing)",
            registry=r,
        )
        self.log_pending = Gauge(
            "mlre_serving_log_pending_rows", "Prediction-log rows not yet written", registry=r
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

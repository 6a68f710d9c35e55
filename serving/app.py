"""FastAPI app factory: /predict, /healthz, /readyz, /metrics over Feast and MLflow models."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from feast import FeatureStore
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from mlre import canary
from mlre.data.generator import ENTITY_COLUMN, TIMESTAMP_COLUMN
from mlre.serving_config import ServingConfig
from mlre.settings import Settings
from serving import routing
from serving.batcher import MicroBatcher
from serving.breaker import CircuitBreaker
from serving.breaker import State as BreakerState
from serving.fallback import RULE_VERSION, rule_score
from serving.features import Columns, FeatureFetcher, FeatureUnavailable, ServicePlan
from serving.models import LoadedModel, ModelHolder, ModelSet, RegistryState, read_state
from serving.prediction_logger import PredictionLog

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
AMOUNT = "amount"


# --------------------------------------------------------------------------------------------
# API schema
# --------------------------------------------------------------------------------------------


class Instance(BaseModel):
    """One entity to score: its key and the request-time values its feature service needs."""

    # Other feature services may need other request values: keep unknown fields, pass them on.
    model_config = ConfigDict(extra="allow")

    customer_id: int = Field(description="Entity key (Feast join key).")
    amount: float = Field(ge=0, allow_inf_nan=False, description="Transaction amount.")
    request_id: str | None = Field(None, max_length=128, description="Caller's id (else one).")


class PredictRequest(BaseModel):
    """A batch of instances (at most ServingConfig.max_instances)."""

    instances: list[Instance] = Field(min_length=1)


class Prediction(BaseModel):
    request_id: str
    customer_id: int
    score: float
    model_version: str
    route: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


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
        self._slots = slots
        self.share.set(models.canary_share)
        self.reloads.inc()


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def model_frame(columns: Columns, inputs: tuple[str, ...], n: int) -> pd.DataFrame:
    """The model's input columns, numeric ones as float64 as in training (and stable in the
    log); a column the store did not return is all-missing."""
    return pd.DataFrame(
        {name: _as_float_if_numeric(columns.get(name, [None] * n)) for name in inputs}
    )


def _as_float_if_numeric(values: Sequence[Any]) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return array.astype(np.float64)
    if array.dtype.kind in "OUS":
        if all(_is_number_or_none(v) for v in array):  # ints with gaps come back as objects
            return np.array([np.nan if v is None else v for v in array], dtype=np.float64)
        return array.astype(object)
    return array  # bool, datetime: as the store returned them


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _log_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Row dicts of plain values (numpy scalars and NaN become Python values / None)."""
    names = list(frame.columns)
    columns = [frame[name].tolist() for name in names]
    return [
        {name: _plain(value) for name, value in zip(names, row, strict=True)}
        for row in zip(*columns, strict=True)
    ]


def _scores(model: Any, frame: pd.DataFrame) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(frame)[:, 1], dtype=np.float64)
    return np.asarray(model.predict(frame), dtype=np.float64)


def _plain(value: Any) -> Any:
    """A JSON/parquet-friendly scalar (numpy scalars and NaN become plain values / None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One instance's outcome before it becomes a response item and a log row."""

    index: int
    score: float
    version: str
    route: str
    features: dict[str, Any]


class PredictionService:
    """Everything /predict needs: the model holder, Feast, the rule, the log and metrics."""

    def __init__(
        self,
        settings: Settings,
        config: ServingConfig,
        *,
        store: FeatureStore,
        holder: ModelHolder,
        metrics: Metrics,
        prediction_log: PredictionLog,
    ) -> None:
        self.settings = settings
        self.config = config
        self.store = store
        self.holder = holder
        self.metrics = metrics
        self.log = prediction_log
        self.fetcher = FeatureFetcher(
            store,
            config.feature_timeout_s,
            config.feature_threads,
            CircuitBreaker(config.breaker_failures, config.breaker_open_s),
            lambda name, s: metrics.feature_latency.labels(feature_service=name).observe(s),
        )
        self.model_name = prediction_log.model_name
        self._probe: tuple[float, str | None] = (-math.inf, "not probed yet")

    # -- scoring ---------------------------------------------------------------------------

    def _rows(self, instances: list[Instance], idx: list[int]) -> list[dict[str, Any]]:
        """Entity rows for Feast: keys plus request-time values."""
        rows = []
        for i in idx:
            item = instances[i].model_dump(exclude={"request_id"})
            rows.append(item)
        return rows

    def _rule(self, instances: list[Instance], idx: list[int], cause: str) -> list[Answer]:
        """Rule-based answers (no model, no features needed)."""
        self.metrics.fallbacks.labels(cause=cause).inc(len(idx))
        return [
            Answer(
                i,
                rule_score(instances[i].amount, {}, self.config.rule),
                RULE_VERSION,
                routing.FALLBACK,
                {},
            )
            for i in idx
        ]

    async def _with_model(
        self, model: LoadedModel, route: str, instances: list[Instance], idx: list[int]
    ) -> list[Answer]:
        """Score a group with one model; FeatureUnavailable / model errors propagate."""
        columns = await self.fetcher.fetch(model.plan, self._rows(instances, idx))
        frame = model_frame(columns, model.inputs, len(idx))
        try:
            scores = _scores(model.model, frame)
        except Exception as exc:
            raise ModelFailed(str(exc)) from exc
        return [
            Answer(i, float(s), model.version, route, record)
            for i, s, record in zip(idx, scores, _log_records(frame), strict=True)
        ]

    async def _group(
        self, models: ModelSet, model: LoadedModel | None, route: str, instances, idx
    ) -> list[Answer]:
        """Answer one routed group, falling back (previous champion, then rule) on failure."""
        if model is None:
            self.metrics.errors.labels(cause="no_model", model_version="none").inc(len(idx))
            return self._rule(instances, idx, "no_model")
        try:
            return await self._with_model(model, route, instances, idx)
        except FeatureUnavailable as exc:
            # Every model needs the store: only the rule can answer now.
            self.metrics.errors.labels(cause=exc.cause, model_version=model.version).inc(len(idx))
            return self._rule(instances, idx, exc.cause)
        except ModelFailed:
            log.exception("Model %s failed to score %d instances", model.version, len(idx))
            self.metrics.errors.labels(cause="model_error", model_version=model.version).inc(
                len(idx)
            )
        backup = models.previous
        if backup is not None and backup is not model and route != routing.FALLBACK:
            try:
                self.metrics.fallbacks.labels(cause="model_error").inc(len(idx))
                return await self._with_model(backup, routing.FALLBACK, instances, idx)
            except (FeatureUnavailable, ModelFailed):
                pass
        return self._rule(instances, idx, "model_error")

    async def predict_batch(
        self, requests: Sequence[PredictRequest], arrived: Sequence[float]
    ) -> list[PredictResponse]:
        """Answer several requests with one feature read and one model call per routed group.

        `arrived` holds each request's perf_counter() arrival time: its latency metric covers
        the time it waited for the batch too.
        """
        instances = [instance for request in requests for instance in request.instances]
        self.metrics.batch_instances.observe(len(instances))
        models = self.holder.current  # one snapshot for the whole batch
        groups: dict[tuple[int, str], tuple[LoadedModel | None, list[int]]] = {}
        for i, instance in enumerate(instances):
            model, route = routing.choose(models, instance.customer_id)
            groups.setdefault((id(model), route), (model, []))[1].append(i)
        # Champion and canary groups read their features concurrently.
        grouped = await asyncio.gather(
            *(
                self._group(models, model, route, instances, idx)
                for (_, route), (model, idx) in groups.items()
            )
        )
        answers = sorted((a for group in grouped for a in group), key=lambda a: a.index)
        done, now = time.perf_counter(), datetime.now(UTC)
        responses, rows, start = [], [], 0
        for request, began in zip(requests, arrived, strict=True):
            end = start + len(request.instances)
            response, logged = self._respond(instances, answers[start:end], done - began, now)
            responses.append(response)
            rows += logged
            start = end
        self.log.append(rows)
        return responses

    def _respond(
        self, instances: list[Instance], answers: list[Answer], elapsed: float, now: datetime
    ) -> tuple[PredictResponse, list[dict[str, Any]]]:
        """One request's response and prediction-log rows; counts it in the metrics."""
        out, rows, seen = [], [], set()
        for answer in answers:
            instance = instances[answer.index]
            request_id = instance.request_id or uuid.uuid4().hex
            out.append(
                Prediction(
                    request_id=request_id,
                    customer_id=instance.customer_id,
                    score=answer.score,
                    model_version=answer.version,
                    route=answer.route,
                )
            )
            rows.append(
                {
                    ENTITY_COLUMN: instance.customer_id,
                    TIMESTAMP_COLUMN: now,
                    "request_id": request_id,
                    "score": answer.score,
                    "model_name": self.model_name,
                    "model_version": answer.version,
                    "route": answer.route,
                    "predicted_at": now,
                    **answer.features,
                }
            )
            self.metrics.predictions.labels(model_version=answer.version, route=answer.route).inc()
            if (answer.version, answer.route) not in seen:
                seen.add((answer.version, answer.route))
                self.metrics.latency.labels(
                    model_version=answer.version, route=answer.route
                ).observe(elapsed)
        return PredictResponse(predictions=out), rows

    # -- readiness -------------------------------------------------------------------------

    async def _probe_store(self, plan: ServicePlan) -> str | None:
        """None if the online store answered a one-row read in time, else why not (cached)."""
        checked, problem = self._probe
        if time.monotonic() - checked < self.config.ready_probe_ttl_s:
            return problem
        try:
            await self.fetcher.fetch(plan, [{ENTITY_COLUMN: 0, AMOUNT: 1.0}])
            problem = None
        except FeatureUnavailable as exc:
            problem = f"feature store unreachable ({exc})"
        self._probe = (time.monotonic(), problem)
        return problem

    async def health(self) -> tuple[list[str], list[str]]:
        """(reasons not to send traffic, degradations while answering anyway).

        Not ready only until the registry has been read once: before that the service cannot
        know whether a champion exists, and answering with the rule could hide one. A missing
        champion or an unreachable feature store is a degradation, not unreadiness: the
        fallback answers, and failing every replica's readiness on a shared dependency would
        turn a degraded service into no service (and a fresh environment without a model
        into a rollout that never completes).
        """
        if not self.holder.registry_read:
            return [f"model registry not read yet for {self.model_name!r}"], []
        models = self.holder.current
        if models.champion is None:
            why = "; ".join(models.problems) or "no champion alias yet"
            return [], [f"no champion model loaded for {self.model_name!r} ({why})"]
        degraded = [f"model problem: {p}" for p in models.problems]
        problem = await self._probe_store(models.champion.plan)
        return [], degraded + ([problem] if problem else [])

    def close(self) -> None:
        """Stop polling, write the rest of the log, release threads."""
        self.holder.stop()
        self.log.close()
        self.fetcher.close()
        log.info(
            "Prediction service stopped; %d prediction rows written in total, %d left unwritten",
            self.log.rows_written,
            self.log.pending,
        )


class ModelFailed(Exception):
    """The model raised while scoring (bad inputs, broken artifact)."""


# --------------------------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------------------------


def build_service(
    settings: Settings,
    config: ServingConfig,
    *,
    store: FeatureStore | None = None,
    read: Callable[[], RegistryState] | None = None,
    load: Callable[[str], LoadedModel] | None = None,
) -> PredictionService:
    """Assemble the service from settings; every collaborator can be passed in (tests)."""
    from mlflow import MlflowClient

    from mlre.features.store import open_store
    from serving.models import mlflow_loader

    model_name = config.model_name or settings.model_name
    store = store or open_store(settings)
    if read is None:
        client = MlflowClient(settings.mlflow_tracking_uri)
        read = lambda: read_state(client, model_name)  # noqa: E731
    load = load or mlflow_loader(settings.mlflow_tracking_uri, model_name, store)
    metrics = Metrics()
    holder = ModelHolder(
        read,
        load,
        on_swap=metrics.published,
        on_error=lambda cause, _: metrics.errors.labels(cause=cause, model_version="none").inc(),
    )
    prediction_log = PredictionLog(
        settings.prediction_log_root,
        model_name,
        flush_rows=config.log_flush_rows,
        flush_interval_s=config.log_flush_interval_s,
        on_error=lambda _: metrics.errors.labels(cause="log_write", model_version="none").inc(),
    )
    return PredictionService(
        settings, config, store=store, holder=holder, metrics=metrics, prediction_log=prediction_log
    )


def _json_safe(value: Any) -> Any:
    """Inputs echoed in a 422 as JSON: non-finite floats (amount=Infinity) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the bad field; FastAPI's own handler cannot encode an echoed Infinity (500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{k: _json_safe(v) for k, v in e.items() if k != "ctx"} for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


def create_app(
    settings: Settings,
    config: ServingConfig | None = None,
    *,
    service: PredictionService | None = None,
    **collaborators: Any,
) -> FastAPI:
    """The FastAPI app; models load and the poller/log writer start in its lifespan."""
    config = config or ServingConfig()
    svc = service or build_service(settings, config, **collaborators)
    batcher: MicroBatcher[PredictRequest, PredictResponse] = MicroBatcher(
        lambda batch: svc.predict_batch([q.item for q in batch], [q.enqueued_at for q in batch]),
        max_size=config.max_batch_instances,
        size_of=lambda request: len(request.instances),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.holder.refresh()  # no model yet is fine: the service answers with the fallback
        svc.holder.start(config.poll_interval_s)
        svc.log.start()
        try:
            yield
        finally:
            await batcher.drain()  # answer what is queued, then flush the log
            svc.close()

    app = FastAPI(title="mlre prediction service", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.service = svc
    app.state.batcher = batcher

    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest) -> PredictResponse:
        if len(request.instances) > config.max_instances:
            svc.metrics.errors.labels(cause="too_many_instances", model_version="none").inc()
            raise HTTPException(
                status_code=413,
                detail=(
                    f"{len(request.instances)} instances in one request; the limit is "
                    f"{config.max_instances} (MLRE_SERVING_MAX_INSTANCES). Split the batch."
                ),
            )
        return await batcher.submit(request)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reasons, degraded = await svc.health()
        models = svc.holder.current
        body = {"ready": not reasons, "reasons": reasons, "degraded": degraded}
        body["models"] = models.slots()
        body["canary_share"] = models.canary_share
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics")
    def metrics() -> Response:
        svc.metrics.log_pending.set(svc.log.pending)
        svc.metrics.breaker_open.set(svc.fetcher.breaker.state is not BreakerState.CLOSED)
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app

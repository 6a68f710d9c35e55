"""FastAPI app factory: /predict, /healthz, /readyz, /metrics over the prediction service."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import threadpoolctl
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlre.serving_config import ServingConfig
from mlre.settings import Settings, apply_runtime_env, get_settings
from serving import metrics as worker_metrics
from serving.batcher import MicroBatcher
from serving.breaker import State as BreakerState
from serving.schemas import PredictRequest, PredictResponse
from serving.service import PredictionService, build_service


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


# How often each worker refreshes its state gauges when several share /metrics (a scrape
# refreshes only the worker that answers it). Prometheus scrapes every 15-30 s.
GAUGE_REFRESH_S = 1.0


def _observe_state(svc: PredictionService) -> None:
    """Set the gauges that mirror state rather than count events."""
    svc.metrics.log_pending.set(svc.log.pending)
    svc.metrics.breaker_open.set(svc.fetcher.breaker.state is not BreakerState.CLOSED)


async def _refresh_gauges(svc: PredictionService) -> None:
    while True:
        _observe_state(svc)
        await asyncio.sleep(GAUGE_REFRESH_S)


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
    # Several workers: /metrics reads every worker's files, not this app's registry.
    shared = worker_metrics.shared_dir() if config.workers > 1 else None
    batcher: MicroBatcher[PredictRequest, PredictResponse] = MicroBatcher(
        lambda batch: svc.predict_batch([q.item for q in batch], [q.enqueued_at for q in batch]),
        max_size=config.max_batch_instances,
        size_of=lambda request: len(request.instances),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if shared:  # this worker may replace one that was killed: drop that one's state
            worker_metrics.forget_dead_workers(shared)
        svc.holder.refresh()  # no model yet is fine: the service answers with the fallback
        await svc.warm_up()  # the first store read opens the connection: not on a request
        svc.holder.start(config.poll_interval_s)
        svc.log.start()
        refresher = asyncio.create_task(_refresh_gauges(svc)) if shared else None
        try:
            yield
        finally:
            if refresher is not None:
                refresher.cancel()
            await batcher.drain()  # answer what is queued, then flush the log
            svc.close()
            if shared:
                worker_metrics.worker_stopped(shared)

    app = FastAPI(title="mlre prediction service", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.service = svc
    app.state.batcher = batcher

    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest) -> Response:
        if len(request.instances) > config.max_instances:
            svc.metrics.errors.labels(cause="too_many_instances", model_version="none").inc()
            raise HTTPException(
                status_code=413,
                detail=(
                    f"{len(request.instances)} instances in one request; the limit is "
                    f"{config.max_instances} (MLRE_SERVING_MAX_INSTANCES). Split the batch."
                ),
            )
        errors = svc.input_errors(request.instances)
        if errors:  # the served model's feature service needs keys or values this lacks
            svc.metrics.errors.labels(cause="bad_instance", model_version="none").inc()
            return JSONResponse(status_code=422, content={"detail": _json_safe(errors)})
        response = await batcher.submit(request)
        # Serialised by pydantic-core straight to bytes: returning the model would have FastAPI
        # validate it against response_model again and walk it with its generic encoder.
        return Response(response.model_dump_json(), media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reasons, degraded = await svc.health()
        models = svc.holder.current
        body = {"ready": not reasons, "reasons": reasons, "degraded": degraded}
        body["worker"] = os.getpid()  # which worker process answered (MLRE_SERVING_WORKERS)
        body["models"] = models.slots()
        body["canary_share"] = models.canary_share
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics")
    def metrics() -> Response:
        _observe_state(svc)
        registry = svc.metrics.registry
        text = worker_metrics.shared_exposition(shared) if shared else generate_latest(registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_environment() -> FastAPI:
    """The app of `python -m serving`, built in each worker process (uvicorn's factory): settings
    and ServingConfig from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    apply_runtime_env(settings)
    # Models load through skops with the platform's allow-list (mlre.model_files), never through
    # MLflow's unpickler; keep that refused here unless the operator turns it on explicitly.
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    config = ServingConfig()
    sys.setswitchinterval(config.gil_switch_interval_s)
    # One request batch is a few rows: OpenMP/BLAS thread pools (HistGradientBoosting, numpy)
    # cost more to wake than the work, and the workers already use every core between them.
    threadpoolctl.threadpool_limits(limits=1)
    app = create_app(settings, config)
    # Feast, MLflow, scikit-learn and pandas leave ~360k long-lived objects behind at import; a
    # full collection scans them all (~200 ms here), a pause that lands in p99. Frozen objects
    # are skipped by the collector; what requests allocate is still collected as usual.
    gc.freeze()
    return app

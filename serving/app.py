"""FastAPI app factory: /predict, /healthz, /readyz, /metrics over the prediction service."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlre.serving_config import ServingConfig
from mlre.settings import Settings
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
    async def predict(request: PredictRequest) -> PredictResponse | JSONResponse:
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

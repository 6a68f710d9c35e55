"""FastAPI app of the alert relay: POST /alerts (Alertmanager's webhook), /healthz, /metrics.

Answers Alertmanager the way its retry logic expects: 2xx once every alert of the payload is an
event on the Prefect server (or already was), 4xx for a payload that will never be accepted (bad
token, malformed body: retrying cannot help, nothing was emitted), 503 when Prefect did not take
the events (Alertmanager retries; the ledger makes the retry safe).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from mlre.alerts import AlertPayloadError, parse_webhook, payload_events
from mlre.relay_config import RelayConfig, prefect_headers, relay_dir, resolve_token
from mlre.settings import Settings
from relay.ledger import Ledger

Emit = Callable[[Sequence[dict[str, Any]]], None]


class EmitError(Exception):
    """The Prefect server did not accept the events."""


def prefect_emitter(api_url: str, timeout_s: float, headers: dict[str, str] | None = None) -> Emit:
    """POST events to Prefect's events API (`POST /api/events`, a batch, 204 on success)."""

    def emit(events: Sequence[dict[str, Any]]) -> None:
        try:
            response = httpx.post(
                f"{api_url.rstrip('/')}/events",
                json=list(events),
                headers=headers or {},
                timeout=timeout_s,
            )
        except httpx.HTTPError as exc:
            raise EmitError(f"Prefect at {api_url} did not answer: {exc}") from exc
        if response.status_code >= 300:
            raise EmitError(
                f"Prefect at {api_url} refused the events: {response.status_code} "
                f"{response.text[:300]}"
            )

    return emit


def _refuse(status: int, reason: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": reason})


def create_app(
    settings: Settings,
    config: RelayConfig | None = None,
    *,
    emit: Emit | None = None,
    ledger: Ledger | None = None,
) -> FastAPI:
    """The relay app; `emit` and `ledger` default to Prefect's API and the file under home."""
    config = config or RelayConfig()
    token = resolve_token(settings, config)
    api_url = config.prefect_api_url or settings.prefect_api_url
    emit = emit or prefect_emitter(api_url, config.emit_timeout_s, prefect_headers(config))
    ledger = ledger or Ledger(relay_dir(settings) / "ledger.sqlite")
    registry = CollectorRegistry()
    alerts_total = Counter(
        "mlre_relay_alerts",
        "Alert state changes received, by outcome",
        ["outcome"],
        registry=registry,
    )
    refused_total = Counter(
        "mlre_relay_refused_requests",
        "Webhook requests refused, by HTTP status",
        ["status"],
        registry=registry,
    )
    lock = asyncio.Lock()  # check, emit and record as one step: concurrent deliveries race

    app = FastAPI(title="mlre alert relay")
    app.state.ledger = ledger

    @app.post("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip(), token):
            refused_total.labels(status="401").inc()
            return _refuse(
                401,
                "missing or wrong bearer token; configure the Alertmanager "
                "receiver's http_config.authorization with the relay's token",
            )
        try:
            payload = parse_webhook(await request.body())
        except AlertPayloadError as exc:
            refused_total.labels(status="400").inc()
            return _refuse(400, str(exc))
        events = payload_events(payload, datetime.now(UTC))
        async with lock:
            unseen = await asyncio.to_thread(ledger.unseen, (e["id"] for e in events))
            fresh = list({e["id"]: e for e in events if e["id"] in unseen}.values())
            if fresh:
                try:
                    await asyncio.to_thread(emit, fresh)
                except EmitError as exc:
                    refused_total.labels(status="503").inc()
                    return _refuse(503, f"{exc}; Alertmanager will retry the delivery")
                await asyncio.to_thread(ledger.record, fresh)
        alerts_total.labels(outcome="emitted").inc(len(fresh))
        alerts_total.labels(outcome="duplicate").inc(len(events) - len(fresh))
        return JSONResponse(
            {
                "received": len(events),
                "emitted": len(fresh),
                "duplicates": len(events) - len(fresh),
                "event_ids": [e["id"] for e in events],
            }
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app

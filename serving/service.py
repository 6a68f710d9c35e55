"""The prediction service: route, read features, score, fall back, log and count each batch.

It holds the collaborators /predict needs (the model holder, the Feast fetcher behind its circuit
breaker, the fallback rule, the buffered prediction log, the metrics); `build_service` wires them
from settings. The HTTP layer (serving.app) only queues requests into `predict_batch`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from feast import FeatureStore

from mlre.data.generator import ENTITY_COLUMN, TIMESTAMP_COLUMN
from mlre.serving_config import ServingConfig
from mlre.settings import Settings
from serving import routing
from serving.breaker import CircuitBreaker
from serving.fallback import RULE_VERSION, rule_score
from serving.features import (
    Columns,
    FeatureFetcher,
    FeatureUnavailable,
    ServicePlan,
    input_errors,
)
from serving.metrics import Metrics
from serving.models import LoadedModel, ModelHolder, ModelSet, RegistryState, read_state
from serving.prediction_logger import PredictionLog
from serving.schemas import Instance, Prediction, PredictRequest, PredictResponse

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def model_table(columns: Columns, inputs: tuple[str, ...], n: int) -> dict[str, np.ndarray]:
    """The model's input columns as arrays, numeric ones as float64 as in training (and stable
    in the log); a column the store did not return is all-missing."""
    return {name: _as_float_if_numeric(columns.get(name, [None] * n)) for name in inputs}


def _as_float_if_numeric(values: Sequence[Any]) -> np.ndarray:
    """Numbers and booleans as float64 (missing as NaN), as training saw them
    (mlre.features.services.as_model_frame); text stays text."""
    array = np.asarray(values)
    if array.dtype.kind in "iufb":
        return array.astype(np.float64)
    if array.dtype.kind in "OUS":
        if all(_is_number_or_none(v) for v in array):  # ints with gaps come back as objects
            return np.array([np.nan if v is None else v for v in array], dtype=np.float64)
        return array.astype(object)
    return array  # datetime: as the store returned it


def _is_number_or_none(value: Any) -> bool:
    return value is None or isinstance(value, int | float)  # bool is an int: 1.0 / 0.0


def _log_records(table: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Row dicts of plain values (numpy scalars and NaN become Python values / None)."""
    names = list(table)
    columns = [table[name].tolist() for name in names]
    return [
        {name: _plain(value) for name, value in zip(names, row, strict=True)}
        for row in zip(*columns, strict=True)
    ]


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
        return [instances[i].model_dump(exclude={"request_id"}) for i in idx]

    def input_errors(self, instances: list[Instance]) -> list[dict[str, Any]]:
        """422 details for instances the served models' feature services cannot read (missing
        or mistyped join keys and request values); checked before anything is queued. With no
        model loaded the rule answers, which needs nothing."""
        models = self.holder.current
        rows = [instance.model_dump(exclude={"request_id"}) for instance in instances]
        plans = {m.plan.name: m.plan for m in (models.champion, models.canary) if m is not None}
        return [error for plan in plans.values() for error in input_errors(plan, rows)]

    def _rule(self, instances: list[Instance], idx: list[int], cause: str) -> list[Answer]:
        """Rule-based answers (no model, no features needed)."""
        self.metrics.fallbacks.labels(cause=cause).inc(len(idx))
        return [
            Answer(
                i,
                rule_score(instances[i].amount or 0.0, {}, self.config.rule),
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
        table = model_table(columns, model.inputs, len(idx))
        try:
            scores = model.scorer.score(table)
        except Exception as exc:
            raise ModelFailed(str(exc)) from exc
        return [
            Answer(i, float(s), model.version, route, record)
            for i, s, record in zip(idx, scores.tolist(), _log_records(table), strict=True)
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
        keys = _join_keys(models)
        groups: dict[tuple[int, str], tuple[LoadedModel | None, list[int]]] = {}
        for i, instance in enumerate(instances):
            model, route = routing.choose(models, _routing_key(instance, keys))
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
            response, logged = self._respond(instances, answers[start:end], done - began, now, keys)
            responses.append(response)
            rows += logged
            start = end
        self.log.append(rows, keys)
        return responses

    def _respond(
        self,
        instances: list[Instance],
        answers: list[Answer],
        elapsed: float,
        now: datetime,
        keys: tuple[str, ...],
    ) -> tuple[PredictResponse, list[dict[str, Any]]]:
        """One request's response and prediction-log rows; counts it in the metrics."""
        out, rows, seen = [], [], set()
        for answer in answers:
            instance = instances[answer.index]
            request_id = instance.request_id or uuid.uuid4().hex
            entity = {key: instance.value(key) for key in keys}
            out.append(
                Prediction(
                    request_id=request_id,
                    customer_id=instance.customer_id,
                    keys=entity,
                    score=answer.score,
                    model_version=answer.version,
                    route=answer.route,
                )
            )
            rows.append(
                {
                    **entity,
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
            await self.fetcher.fetch(plan, [_probe_row(plan)])
            problem = None
        except FeatureUnavailable as exc:
            problem = f"feature store unreachable ({exc})"
        self._probe = (time.monotonic(), problem)
        return problem

    async def warm_up(self) -> None:
        """Read the champion's features once before this worker takes traffic (its first read
        would otherwise miss the request budget and fall back); a failure is only logged."""
        champion = self.holder.current.champion
        if champion is None:
            return
        plan, budget = champion.plan, self.config.warm_up_timeout_s
        problem = await self.fetcher.warm_up(plan, [_probe_row(plan)], budget)
        if problem:
            log.warning("Warm-up read of %s failed, serving anyway: %s", plan.name, problem)

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


# A key or request value of each kind that no entity has: the readiness probe's one-row read.
_PROBE_VALUES: dict[str, Any] = {"int": 0, "float": 1.0, "string": "", "bool": False}


def _probe_row(plan: ServicePlan) -> dict[str, Any]:
    """An entity row of `plan` that matches no entity (probes and warm-up read nothing real)."""
    return {name: _PROBE_VALUES.get(kind, 0) for name, kind in plan.input_kinds}


def _join_keys(models: ModelSet) -> tuple[str, ...]:
    """The entity keys requests are routed and logged by: the champion's feature service's
    (the demo's customer_id while no model is loaded)."""
    model = models.champion or models.canary or models.previous
    return model.plan.join_keys if model is not None else (ENTITY_COLUMN,)


def _routing_key(instance: Instance, keys: tuple[str, ...]) -> object:
    """The value the canary split hashes: the key itself, or the tuple of a composite key."""
    values = tuple(instance.value(key) for key in keys)
    return values[0] if len(values) == 1 else values


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

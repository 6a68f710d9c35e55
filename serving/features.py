"""Online features of a Feast feature service, read in-process with a time budget.

A service is resolved once per model version into a plan: the batch-view feature references read
from the online store, and the on-demand views computed here from those values plus the request
values, with the view's own transformation. Computing on-demand views here (rather than through
`get_online_features(features=service)`) works with registries written by `mlre.features.store.
apply_repo`, which do not hold Feast's `__dummy` entity that Feast 0.67's online path looks up for
on-demand views, and it saves Feast's per-request on-demand bookkeeping.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore, OnDemandFeatureView

from mlre.features.sources import kind_of
from serving.breaker import CircuitBreaker


@dataclass(frozen=True)
class ServicePlan:
    """How to read one feature service online."""

    name: str
    join_keys: tuple[str, ...]
    batch_refs: tuple[str, ...]
    # (view, the features read from it, the columns its transformation takes)
    on_demand: tuple[tuple[OnDemandFeatureView, tuple[str, ...], tuple[str, ...]], ...]
    request_columns: tuple[str, ...]
    outputs: tuple[str, ...]
    # join key or request column -> validator kind ("int", "string", "float", ...)
    input_kinds: tuple[tuple[str, str], ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        """What a caller sends per entity: the join keys, then the request values."""
        return (*self.join_keys, *self.request_columns)


def plan_service(store: FeatureStore, service: FeatureService) -> ServicePlan:
    """Resolve a service into batch references and on-demand views (once per model load)."""
    batch = {fv.name: fv for fv in store.list_feature_views()}
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    refs: list[str] = []
    keys: list[str] = []
    on_demand: list[tuple[OnDemandFeatureView, tuple[str, ...], tuple[str, ...]]] = []
    request: list[str] = []
    outputs: list[str] = []

    kinds: dict[str, str] = {}

    def add_batch(view_name: str, features: list[str]) -> None:
        for column in batch[view_name].entity_columns:
            kinds.setdefault(column.name, kind_of(column.dtype))
        for key in batch[view_name].join_keys:
            if key not in keys:
                keys.append(key)
        refs.extend(r for r in (f"{view_name}:{f}" for f in features) if r not in refs)

    for projection in service.feature_view_projections:
        names = [f.name for f in projection.features]
        outputs.extend(names)
        if projection.name in batch:
            add_batch(projection.name, names)
        elif projection.name in odfvs:
            odfv = odfvs[projection.name]
            takes: list[str] = []
            for source in odfv.source_feature_view_projections.values():
                add_batch(source.name, [f.name for f in source.features])
                takes.extend(f.name for f in source.features)
            for source in odfv.source_request_sources.values():
                request.extend(f.name for f in source.schema if f.name not in request)
                kinds.update({f.name: kind_of(f.dtype) for f in source.schema})
                takes.extend(f.name for f in source.schema)
            on_demand.append((odfv, tuple(names), tuple(dict.fromkeys(takes))))
    return ServicePlan(
        service.name,
        tuple(keys),
        tuple(refs),
        tuple(on_demand),
        tuple(request),
        tuple(outputs),
        tuple((name, kinds.get(name, "any")) for name in (*keys, *request)),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# What a JSON value must be to stand for a Feast key or request value of a kind.
_ACCEPTS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": _is_number,
    "string": lambda value: isinstance(value, str),
    "bool": lambda value: isinstance(value, bool),
}


def input_errors(plan: ServicePlan, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """422 details (FastAPI's shape) for rows that lack a join key or request value of `plan`,
    or carry one of the wrong type; empty when every row can be scored."""
    needs = (
        f"feature service {plan.name!r} joins on {list(plan.join_keys)} and needs the request "
        f"values {list(plan.request_columns)}; send them as fields of every instance"
    )
    errors: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        for name, kind in plan.input_kinds:
            value = row.get(name)
            loc = ["body", "instances", index, name]
            if value is None:
                errors.append({"loc": loc, "type": "missing", "msg": f"Field required ({needs})"})
            elif not _ACCEPTS.get(kind, lambda _: True)(value):
                errors.append(
                    {
                        "loc": loc,
                        "type": "type_error",
                        "msg": f"{name}={value!r} is not a valid {kind} ({needs})",
                    }
                )
    return errors


def _transform(odfv: OnDemandFeatureView, inputs: dict[str, Sequence[Any]]) -> Mapping[str, Any]:
    """Run the view's own transformation on its input columns: a python-mode view takes them as
    lists (no DataFrame at all), a pandas-mode view as a DataFrame of just those columns."""
    transformation = odfv.feature_transformation
    if odfv.mode == "python":
        return transformation.transform({name: list(values) for name, values in inputs.items()})
    # copy=False skips a copy of every column, a third of the frame's cost at one row.
    return transformation.transform(pd.DataFrame(inputs, copy=False))


Columns = dict[str, Sequence[Any]]


def _entity_rows(plan: ServicePlan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in plan.join_keys} for row in rows]


def _read_stored(store: FeatureStore, plan: ServicePlan, rows: list[dict[str, Any]]) -> Columns:
    """The batch-view values of `plan` from the online store (blocking read)."""
    entity_rows = _entity_rows(plan, rows)
    return store.get_online_features(
        features=list(plan.batch_refs), entity_rows=entity_rows
    ).to_dict()


async def _read_stored_async(
    store: FeatureStore, plan: ServicePlan, rows: list[dict[str, Any]]
) -> Columns:
    """`_read_stored` through the store's own async client (Redis): no thread involved."""
    response = await store.get_online_features_async(
        features=list(plan.batch_refs), entity_rows=_entity_rows(plan, rows)
    )
    return response.to_dict()


def complete_columns(plan: ServicePlan, rows: list[dict[str, Any]], columns: Columns) -> Columns:
    """Add the request values and the on-demand features computed from them (in place)."""
    for column in plan.request_columns:
        columns[column] = [row.get(column) for row in rows]
    for odfv, names, takes in plan.on_demand:
        computed = _transform(odfv, {name: columns[name] for name in takes})
        for name in names:
            columns[name] = np.asarray(computed[name])
    return columns


def read_columns(store: FeatureStore, plan: ServicePlan, rows: list[dict[str, Any]]) -> Columns:
    """Feature values of `plan` for entity rows (keys + request values) as name -> values in
    row order (blocking)."""
    return complete_columns(plan, rows, _read_stored(store, plan, rows))


def read_features(
    store: FeatureStore, plan: ServicePlan, rows: list[dict[str, Any]]
) -> pd.DataFrame:
    """`read_columns` as a DataFrame."""
    return pd.DataFrame(read_columns(store, plan, rows))


class FeatureUnavailable(Exception):
    """No features now; `cause` is feature_timeout, feature_store, circuit_open or
    feature_transform (an on-demand view failed on the values)."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause


class FeatureFetcher:
    """Online reads bounded by a timeout and guarded by a circuit breaker, on the event loop.

    Stores with an async client in Feast (Redis) are read without leaving the event loop; the
    others (SQLite) are read on a small thread pool. A read is abandoned after `timeout_s`;
    after repeated failures the breaker refuses reads for a while, so callers fall back at once.
    Either way the caller gets FeatureUnavailable with its cause.
    """

    def __init__(
        self,
        store: FeatureStore,
        timeout_s: float,
        threads: int,
        breaker: CircuitBreaker,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.breaker = breaker
        self._observe = observe
        self.native_async = bool(store.provider.async_supported.online.read)
        # A hung store ties up at most `threads` threads; later reads time out in the queue.
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="feast-online")

    def _read(self, plan: ServicePlan, rows: list[dict[str, Any]]) -> Awaitable[Columns]:
        if self.native_async:
            return _read_stored_async(self.store, plan, rows)
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.pool, _read_stored, self.store, plan, rows)

    async def fetch(self, plan: ServicePlan, rows: list[dict[str, Any]]) -> Columns:
        """Feature columns for rows (same order), or FeatureUnavailable with its cause."""
        if not self.breaker.allow():
            raise FeatureUnavailable(
                "circuit_open",
                f"the online store failed {self.breaker.failures} reads in a row; next try in "
                f"{self.breaker.retry_in_s():.1f} s",
            )
        began, ok = time.perf_counter(), False
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                stored = await self._read(plan, rows)
            ok = True
        except TimeoutError as exc:
            raise FeatureUnavailable("feature_timeout", f"> {self.timeout_s} s") from exc
        except Exception as exc:  # Redis/SQLite/registry errors all mean "no features now"
            raise FeatureUnavailable("feature_store", f"{type(exc).__name__}: {exc}") from exc
        finally:  # also on cancellation: a half-open probe must never stay pending
            (self.breaker.succeeded if ok else self.breaker.failed)()
            if self._observe:
                self._observe(plan.name, time.perf_counter() - began)
        try:
            return complete_columns(plan, rows, stored)
        except Exception as exc:  # an on-demand view failed on these values: not the store
            raise FeatureUnavailable("feature_transform", f"{type(exc).__name__}: {exc}") from exc

    async def warm_up(self, plan: ServicePlan, rows: list[dict[str, Any]], timeout_s: float) -> str:
        """One read outside a request's budget, the breaker and the metrics, before traffic: a
        worker's first read opens Feast's client and its connection, which alone can take longer
        than `timeout_s` of a request. Returns why it failed ("" when it did not)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._read(plan, rows)
        except Exception as exc:  # the service answers with its fallback until the store does
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ""

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

"""Flow `materialize-features`: sync the registry, validate sources, write the online store."""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.task_runners import TaskRunner
from pydantic import Field

from flows import slis
from flows._common import StoreParams, server_task, store_for
from flows.resume import resumable
from flows.runners import partition_runner
from mlre.features import materialize as engine
from mlre.features.sources import validate_view_source
from mlre.features.store import apply_repo, select_views
from mlre.settings import get_settings


class MaterializeParams(StoreParams):
    """What to materialize and how; every field shows up in the Prefect UI's run form."""

    feature_views: list[str] | None = Field(None, description="Views to write (default: all).")
    feature_service: str | None = Field(None, description="Or: the views this service reads.")
    mode: Literal["incremental", "backfill"] = "incremental"
    start: datetime | None = Field(None, description="Backfill start (UTC, inclusive).")
    end: datetime | None = Field(None, description="End (UTC, inclusive; default now).")
    partitions: int = Field(4, ge=1, le=256, description="Entity hash partitions (write tasks).")
    memory_limit_mb: int = Field(512, ge=64, description="DuckDB memory limit per partition.")
    validate_sources: bool = Field(True, description="Validate source files before reading.")


# A bad repo path or profile is the user's to fix: server_task retries only transient failures.
@server_task("apply-feature-repo", retries=2, retry_delay_seconds=[2, 5])
def apply_feature_repo(repo_path: str | None, store_profile: str | None) -> dict[str, list[str]]:
    """Sync the Feast registry with the repo's definitions."""
    settings = get_settings()
    store = store_for(repo_path, store_profile)
    summary = apply_repo(store, store.config.repo_path or settings.feature_repo, settings)
    return {"feature_views": summary.feature_views, "feature_services": summary.feature_services}


@task(cache_policy=NO_CACHE, name="validate-source")
def validate_source(repo_path: str | None, store_profile: str | None, view: str) -> int:
    """Refuse bad source data before anything reads it; returns the rows checked."""
    store = store_for(repo_path, store_profile)
    return validate_view_source(store, store.get_feature_view(view), now=engine.utcnow()).rows


@task(cache_policy=NO_CACHE, name="plan-window")
def plan_window(
    repo_path: str | None, store_profile: str | None, view: str, params: MaterializeParams
) -> tuple[engine.Window, int] | None:
    """The interval this run materializes for one view and its partition count (None: nothing)."""
    store = store_for(repo_path, store_profile)
    feature_view = store.get_feature_view(view, allow_registry_cache=False)
    spec = engine.view_spec(store, feature_view)
    source_start = None
    if params.mode == "incremental" and feature_view.most_recent_end_time is None:
        source_start, _ = engine.source_time_range(spec)
    window = engine.plan_window(
        params.mode,
        start=params.start,
        end=params.end,
        last_end=feature_view.most_recent_end_time if params.mode == "incremental" else None,
        source_start=source_start,
        now=engine.utcnow(),
    )
    return None if window is None else (window, params.partitions)


@server_task("materialize-partition", retries=3, retry_delay_seconds=[2, 5, 15])
def materialize_partition(
    repo_path: str | None,
    store_profile: str | None,
    view: str,
    *,
    window: engine.Window,
    partition: int,
    partitions: int,
    memory_limit_mb: int,
    source_uri: str | None = None,
) -> engine.PartitionResult:
    """Write the newest row of every key in one hash partition (idempotent)."""
    settings = get_settings()
    store = store_for(repo_path, store_profile)
    return engine.materialize_partition(
        store,
        store.get_feature_view(view),
        window,
        partition,
        partitions,
        memory_limit_mb=memory_limit_mb,
        temp_dir=settings.tmp_dir / "duckdb",
        source_uri=source_uri,
    )


@server_task("stage-source", retries=2, retry_delay_seconds=[2, 10])
def stage_source(
    repo_path: str | None, store_profile: str | None, view: str, window: engine.Window
) -> str | None:
    """A remote (S3) source's window copied locally once, so partitions do not each download
    it again; None for a local source. The flow deletes the copy when the view is done."""
    store = store_for(repo_path, store_profile)
    spec = engine.view_spec(store, store.get_feature_view(view))
    folder = get_settings().tmp_dir / "staging" / f"{view}-{uuid.uuid4().hex[:8]}"
    return engine.stage_source(spec, window, folder)


@server_task("record-interval", retries=2, retry_delay_seconds=[2, 5])
def record_interval(
    repo_path: str | None, store_profile: str | None, view: str, window: engine.Window
) -> None:
    """Mark the interval materialized in the registry (after every partition succeeded)."""
    store = store_for(repo_path, store_profile)
    engine.record_interval(store, store.get_feature_view(view), window)


def _newest(results: list[engine.PartitionResult]) -> datetime | None:
    """The newest event time the partitions wrote (None: they wrote nothing)."""
    return max((r.max_event_timestamp for r in results if r.max_event_timestamp), default=None)


def _report(results: list[engine.PartitionResult], windows: dict[str, engine.Window]) -> None:
    create_table_artifact(
        key="materialization-partitions",
        table=[
            {
                "feature_view": r.feature_view,
                "partition": r.partition,
                "rows": r.rows,
                "keys": r.keys,
                "seconds": r.seconds,
            }
            for r in results
        ],
        description="Rows read and keys written per entity partition.",
    )
    lines = [
        "# Freshness watermark",
        "",
        "| feature view | window | newest event |",
        "|---|---|---|",
    ]
    for view, window in windows.items():
        newest = max(
            (
                r.max_event_timestamp
                for r in results
                if r.feature_view == view and r.max_event_timestamp
            ),
            default=None,
        )
        span = f"{window.start:%Y-%m-%d %H:%M} → {window.end:%Y-%m-%d %H:%M} UTC"
        lines.append(f"| {view} | {span} | {newest} |")
    create_markdown_artifact(key="freshness-watermark", markdown="\n".join(lines))


@flow(name="materialize-features", log_prints=True, **slis.flow_run_hooks())
def materialize_features(params: MaterializeParams | None = None) -> list[engine.PartitionResult]:
    """Apply the feature repo and materialize every selected view, partition by partition."""
    params = params or MaterializeParams()
    views = list(params.feature_views or [])
    finished: dict[str, datetime | None] = {}
    try:
        return _materialize(params, views, finished)
    finally:
        # Freshness only from a run that reached now (a backfill of the past would look stale).
        slis.materialization(views, finished, freshness=params.end is None)


def _materialize(
    params: MaterializeParams, views: list[str], finished: dict[str, datetime | None]
) -> list[engine.PartitionResult]:
    """The flow's body; fills `views` (selected) and `finished` (view -> newest event written)."""
    logger = get_run_logger()
    repo, profile = params.repo_path, params.store_profile
    apply_feature_repo(repo, profile)
    store = store_for(repo, profile)
    views[:] = [fv.name for fv in select_views(store, params.feature_views, params.feature_service)]
    if params.validate_sources:
        for view in views:
            validate_source(repo, profile, view)
    windows: dict[str, engine.Window] = {}
    results: list[engine.PartitionResult] = []
    # Resumable (flows/resume.py): a retry of this run plans the same windows (not up to a new
    # "now"), skips the partitions and intervals an earlier attempt finished.
    plan = resumable(plan_window, "repo_path", "store_profile", "view", "params")
    record = resumable(record_interval, "repo_path", "store_profile", "view", "window")
    with partition_runner(store.config.online_store.type) as (runner, runner_plan):
        for view in views:
            planned = plan(repo, profile, view, params)
            if planned is None:
                logger.info("%s: nothing new to materialize", view)
                finished[view] = None
                continue
            window, partitions = planned
            windows[view] = window
            stage = runner_plan.shares_local_disk
            written = _write_partitions(runner, params, view, window, partitions, stage=stage)
            results.extend(written)
            record(repo, profile, view, window)
            finished[view] = _newest(written)
            keys = sum(r.keys for r in written)
            logger.info("%s: %s keys in %s partitions", view, keys, partitions)
    _report(results, windows)
    return results


def _write_partitions(
    runner: TaskRunner[Any],
    params: MaterializeParams,
    view: str,
    window: engine.Window,
    partitions: int,
    *,
    stage: bool,
) -> list[engine.PartitionResult]:
    """Every partition of one view as a task on `runner`. `stage`: the workers share this
    machine's disk, so a remote source is copied here once for all of them (deleted after)."""
    repo, profile = params.repo_path, params.store_profile
    staged = stage_source(repo, profile, view, window) if stage else None
    try:
        partition_task = resumable(
            materialize_partition, "repo_path", "store_profile", "view", "window", "partition",
            "partitions",
        )  # fmt: skip
        futures = runner.map(
            partition_task,
            {
                "repo_path": unmapped(repo),
                "store_profile": unmapped(profile),
                "view": unmapped(view),
                "window": unmapped(window),
                "partition": range(partitions),
                "partitions": unmapped(partitions),
                "memory_limit_mb": unmapped(params.memory_limit_mb),
                "source_uri": unmapped(staged),
            },
        )
        return futures.result()
    finally:
        if staged:
            shutil.rmtree(Path(staged).parent, ignore_errors=True)

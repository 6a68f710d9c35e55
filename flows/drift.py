"""Flow `check-drift`: the champion's stored reference vs a recent window, features and scores."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow, task, unmapped
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows import automations, slis
from flows._common import (
    LabelParams,
    ModelParams,
    StoreParams,
    lake_source,
    mlflow_client,
    server_task,
    store_for,
)
from flows.runners import partition_runner
from mlre import drift, inference, prediction_log, registry, training
from mlre.data.lake import read_events
from mlre.features.store import get_feature_service
from mlre.mlflow_uri import global_tracking_uri
from mlre.settings import get_settings

REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
SCHEMA_FILE = "schema.json"
REPORT_DIR = "drift"
# schema.json says numeric/categorical (training's words); Evidently's are numerical/categorical.
_KINDS = {"numeric": "numerical", "numerical": "numerical", "categorical": "categorical"}


class CheckDriftParams(LabelParams, ModelParams, StoreParams):
    """Which model version to check, against which window and source (the feature store and
    the label events, as entity rows, are read only for source=offline)."""

    version: str | None = Field(None, description="Model version (default: the champion).")
    source: Literal["predictions", "offline"] = Field(
        "predictions",
        description="Current data: the prediction log, or features from the offline store.",
    )
    start: datetime | None = Field(None, description="Window start (default: end - 1 day).")
    end: datetime | None = Field(
        None, description="Window end, exclusive (default: the last UTC midnight before now)."
    )
    now: datetime | None = Field(
        None, description="The clock for the default window (default: the real clock)."
    )
    config: drift.DriftConfig = Field(default_factory=drift.DriftConfig)
    emit_events: bool = Field(True, description="Emit mlre.model.drift-detected on drift.")


@dataclass(frozen=True)
class Reference:
    """A version's stored drift reference."""

    model_name: str
    version: str
    run_id: str
    frame: pd.DataFrame
    schema: dict[str, drift.ColumnKind]


@dataclass(frozen=True)
class DriftOutcome:
    """What the flow found, for callers and the run's result."""

    model_name: str
    version: str
    drifted: bool
    reasons: list[str]
    drifted_columns: tuple[str, ...]
    prediction_drifted: bool
    report_url: str | None


def _window(params: CheckDriftParams) -> tuple[datetime, datetime]:
    """[start, end): default the previous full UTC day, the day batch-inference scored."""
    now = params.now or datetime.now(UTC)
    end = params.end or now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return params.start or end - timedelta(days=1), end


def _resolve_version(model_name: str, version: str | None) -> Any:
    """The requested version, else the champion; a DriftError when there is none."""
    client = mlflow_client()
    if version is not None:
        return registry.get_version(client, model_name, version)
    champion = registry.champion_version(client, model_name)
    if champion is None:
        raise drift.DriftError(
            f"Model {model_name!r} has no champion; pass `version` or promote one first."
        )
    return champion


def parse_schema(raw: dict[str, str], label: str) -> dict[str, drift.ColumnKind]:
    """schema.json -> drift schema of the model inputs (the score column is checked apart)."""
    unknown = {c: k for c, k in raw.items() if k not in _KINDS}
    if unknown:
        raise drift.DriftError(f"{label}: reference/schema.json has unknown kinds {unknown}.")
    return {c: _KINDS[k] for c, k in raw.items() if c != training.PREDICTION_COLUMN}  # type: ignore[misc]


@server_task("load-reference", retries=2, retry_delay_seconds=[2, 10])
def load_reference(model_name: str, version: str | None) -> Reference:
    """Download `reference/` of the version's training run: the sample and its schema."""
    settings = get_settings()
    mv = _resolve_version(model_name, version)
    label = f"Model {model_name!r} version {mv.version} (run {mv.run_id})"
    client = mlflow_client()
    stored = {a.path for a in client.list_artifacts(mv.run_id, REFERENCE_DIR)}
    needed = {f"{REFERENCE_DIR}/{REFERENCE_FILE}", f"{REFERENCE_DIR}/{SCHEMA_FILE}"}
    if not needed <= stored:
        raise drift.DriftError(
            f"{label} has no drift reference (missing {sorted(needed - stored)}); retrain it "
            "with the train-model flow, which stores reference/ with the run."
        )
    with tempfile.TemporaryDirectory(prefix="mlre-ref-") as tmp:
        with global_tracking_uri(settings.mlflow_tracking_uri):
            local = Path(client.download_artifacts(mv.run_id, REFERENCE_DIR, tmp))
        frame = pd.read_parquet(local / REFERENCE_FILE)
        schema = parse_schema(json.loads((local / SCHEMA_FILE).read_text()), label)
    return Reference(model_name, str(mv.version), mv.run_id, frame, schema)


def offline_features(params: CheckDriftParams, service: str, events: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of the service for the window's events (Feast drops unserved rows)."""
    store = store_for(params.repo_path, params.store_profile)
    feature_service = get_feature_service(store, service)
    keys, request = inference.required_columns(store, feature_service)
    entity = events[[*keys, inference.TIMESTAMP_COLUMN, *request]]
    return store.get_historical_features(entity_df=entity, features=feature_service).to_df()


@server_task("load-current", retries=2, retry_delay_seconds=[2, 10])
def load_current(params: CheckDriftParams, reference: Reference) -> pd.DataFrame:
    """The window's rows: the version's predictions, or offline-store features of its events."""
    settings = get_settings()
    start, end = _window(params)
    label = f"model {reference.model_name!r} version {reference.version}"
    if params.source == "predictions":
        frame = prediction_log.read_predictions(
            settings.prediction_log_root, reference.model_name, start, end
        )
        frame = frame[frame["model_version"] == reference.version]
        where = f"the prediction log of {label}"
    else:
        tags = mlflow_client().get_model_version(reference.model_name, reference.version).tags
        service = tags.get(inference.FEATURE_SERVICE_TAG, "fraud_model_v1")
        events = read_events(lake_source(params.label_source), start=start, end=end)
        frame = offline_features(params, service, events) if len(events) else events
        where = f"the offline store ({service}) for {label}"
    if frame.empty:
        raise drift.DriftError(
            f"The current window [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) of {where} has no "
            "rows; score that window first or pick one that has data. (No rows is not 'no drift'.)"
        )
    return frame.reset_index(drop=True)


def check_columns(reference: Reference, current: pd.DataFrame, source: str) -> None:
    """DriftError naming the model, version and columns the current data lacks."""
    wanted = [*reference.schema, *([drift.SCORE_COLUMN] if source == "predictions" else [])]
    missing = [c for c in wanted if c not in current.columns]
    if missing:
        raise drift.DriftError(
            f"Model {reference.model_name!r} version {reference.version}: the current data "
            f"({source}) lacks column(s) {missing} of the stored reference; the inputs changed: "
            "fix the producer or retrain on the new inputs."
        )
    if training.PREDICTION_COLUMN not in reference.frame.columns:
        raise drift.DriftError(
            f"Model {reference.model_name!r} version {reference.version}: the stored reference "
            f"lacks the {training.PREDICTION_COLUMN!r} score column; retrain to store it."
        )


@task(cache_policy=NO_CACHE, name="run-drift-checks")
def run_checks(
    reference: Reference, current: pd.DataFrame, params: CheckDriftParams
) -> tuple[drift.DriftResult, drift.ColumnDrift | None]:
    """Evidently on the feature columns, then prediction drift on the scores."""
    check_columns(reference, current, params.source)
    label = f"Model {reference.model_name!r} version {reference.version}"
    try:
        result = drift.check_drift(reference.frame, current, reference.schema, params.config)
    except drift.DriftError as exc:
        raise drift.DriftError(f"{label}: {exc}") from exc
    scores = None
    if params.source == "predictions":
        scores = drift.prediction_drift(
            reference.frame[training.PREDICTION_COLUMN], current[drift.SCORE_COLUMN], params.config
        )
    return result, scores


def verdict(result: drift.DriftResult, scores: drift.ColumnDrift | None) -> tuple[bool, list[str]]:
    """Drifted when the inputs drifted or the scores did; the reasons for both."""
    reasons = list(result.decision.reasons)
    if scores is not None:
        reasons.append(
            f"Prediction drift on scores: {scores.method} = {scores.score:.4f} "
            f"(threshold {scores.threshold:g}): {'drifted' if scores.drifted else 'stable'}."
        )
    return result.decision.drifted or bool(scores and scores.drifted), reasons


def column_rows(columns: list[drift.ColumnDrift]) -> list[dict[str, Any]]:
    """One table row per column, every field a reader needs."""
    return [
        {
            "column": c.column,
            "kind": c.kind,
            "method": c.method,
            "score": round(c.score, 5),
            "threshold": c.threshold,
            "drifted": c.drifted,
            "borderline": c.borderline,
            "missing_share_ref": round(c.missing_share_reference, 4),
            "missing_share_cur": round(c.missing_share_current, 4),
            "missing_surge": c.missing_surge,
            "new_categories": ", ".join(c.new_categories),
        }
        for c in columns
    ]


def verdict_markdown(
    outcome: DriftOutcome, window: tuple[datetime, datetime], source: str, rows: tuple[int, int]
) -> str:
    """The markdown artifact: verdict first, then the reasons."""
    head = "Drift detected" if outcome.drifted else "No drift"
    lines = [
        f"# {head}: {outcome.model_name} v{outcome.version}",
        "",
        f"Window [{window[0]:%Y-%m-%d %H:%M}, {window[1]:%Y-%m-%d %H:%M}) UTC from {source}; "
        f"{rows[0]} reference rows vs {rows[1]} current rows.",
        "",
        *[f"- {reason}" for reason in outcome.reasons],
    ]
    if outcome.report_url:
        lines += ["", f"[Evidently report in MLflow]({outcome.report_url})"]
    return "\n".join(lines)


@server_task("log-drift-report", retries=3, retry_delay_seconds=[2, 5, 15])
def log_report(reference: Reference, result: drift.DriftResult, stamp: str) -> str | None:
    """The Evidently HTML under `drift/<stamp>.html` of the version's run; its MLflow UI URL."""
    if result.report is None:
        return None
    settings = get_settings()
    client = mlflow_client()
    with tempfile.TemporaryDirectory(prefix="mlre-drift-") as tmp:
        path = drift.save_html(result.report, Path(tmp) / f"{stamp}.html")
        with global_tracking_uri(settings.mlflow_tracking_uri):
            client.log_artifact(reference.run_id, str(path), artifact_path=REPORT_DIR)
    experiment = client.get_run(reference.run_id).info.experiment_id
    return (
        f"{settings.mlflow_tracking_uri}/#/experiments/{experiment}/runs/{reference.run_id}"
        f"/artifactPath/{REPORT_DIR}/{stamp}.html"
    )


@flow(name="check-drift", log_prints=True, **slis.flow_run_hooks())
def check_drift(params: CheckDriftParams | None = None) -> DriftOutcome:
    """Champion's training reference vs the current window: table, verdict, report, event."""
    params = params or CheckDriftParams()
    model_name = params.model_name or get_settings().model_name
    reference = load_reference(model_name, params.version)
    current = load_current(params, reference)
    result, scores = run_checks(reference, current, params)
    return _publish(params, reference, current, result, scores)


class CheckDriftModelsParams(CheckDriftParams):
    """check-drift for several models in one run; `model_name` and `version` are not used."""

    model_names: list[str] = Field(
        ..., min_length=1, description="Registered models whose champions are checked."
    )


@flow(name="check-drift-models", log_prints=True, **slis.flow_run_hooks())
def check_drift_models(params: CheckDriftModelsParams) -> list[DriftOutcome]:
    """check-drift for every model of `model_names`, their Evidently checks one task each on
    the settings' task runner (MLRE_TASK_RUNNER: Dask workers for a fleet of models). Each
    model gets its own verdict, SLI, report and event, as in check-drift."""
    references = [load_reference(name, None) for name in params.model_names]
    currents = [load_current(params, reference) for reference in references]
    with partition_runner() as (runner, _):
        futures = runner.map(
            run_checks,
            {"reference": references, "current": currents, "params": unmapped(params)},
        )
        checked = futures.result()
    return [
        _publish(params, reference, current, result, scores, per_model=True)
        for reference, current, (result, scores) in zip(references, currents, checked, strict=True)
    ]


def _artifact_key(base: str, model_name: str, per_model: bool) -> str:
    """`base`, or `base-<model>` (lower case, dashes) when one run reports several models."""
    if not per_model:
        return base
    return f"{base}-{re.sub(r'[^a-z0-9]+', '-', model_name.lower()).strip('-')}"


def _publish(
    params: CheckDriftParams,
    reference: Reference,
    current: pd.DataFrame,
    result: drift.DriftResult,
    scores: drift.ColumnDrift | None,
    *,
    per_model: bool = False,
) -> DriftOutcome:
    """One model's verdict: SLI, Evidently report in MLflow, artifacts, the drift event."""
    model_name = reference.model_name
    drifted, reasons = verdict(result, scores)
    slis.drift(
        model_name, reference.version, result.decision.drifted_share, params.config.drift_share
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    url = log_report(reference, result, stamp)
    outcome = DriftOutcome(
        model_name=model_name,
        version=reference.version,
        drifted=drifted,
        reasons=reasons,
        drifted_columns=result.decision.drifted_columns,
        prediction_drifted=bool(scores and scores.drifted),
        report_url=url,
    )
    window = _window(params)
    create_table_artifact(
        key=_artifact_key("drift-columns", model_name, per_model),
        table=column_rows([*result.columns, *([scores] if scores else [])]),
        description=f"{model_name} v{reference.version}: every column's drift test.",
    )
    create_markdown_artifact(
        key=_artifact_key("drift-verdict", model_name, per_model),
        markdown=verdict_markdown(
            outcome, window, params.source, (len(reference.frame), len(current))
        ),
    )
    if url:
        create_link_artifact(
            key=_artifact_key("drift-report", model_name, per_model),
            link=url,
            link_text=f"Evidently report {stamp} in MLflow",
        )
    if drifted and params.emit_events:
        automations.emit_model_event(
            automations.DRIFT_EVENT,
            model_name,
            reference.version,
            reasons,
            {"drifted_columns": list(result.decision.drifted_columns), "report_url": url},
        )
    return outcome

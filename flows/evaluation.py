"""Flow `evaluate-model`: candidate and champion on the same held-out window, then the gate."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from flows import slis
from flows._common import (
    LabelParams,
    ModelParams,
    StoreParams,
    lake_source,
    load_model_version,
    mlflow_client,
    server_task,
    store_for,
)
from mlre import evaluation, registry, training
from mlre.data.lake import check_window, read_events
from mlre.settings import get_settings


class EvaluateParams(LabelParams, ModelParams, StoreParams):
    """Which version to judge, on which window, with which thresholds."""

    version: str = Field(..., description="The candidate model version.")
    window_start: datetime = Field(..., description="Held-out window start (inclusive).")
    window_end: datetime = Field(..., description="Held-out window end (inclusive).")
    slice_columns: list[str] = Field(
        default_factory=lambda: ["merchant_category", "preferred_channel"]
    )
    gate: evaluation.GateConfig = Field(default_factory=evaluation.GateConfig)
    dry_run: bool = Field(False, description="Decide and report, but write no tag or alias.")


@dataclass(frozen=True)
class GateOutcome:
    """The decision and what it was about."""

    model_name: str
    version: str
    champion_version: str | None
    passed: bool
    reasons: list[str]
    dry_run: bool


def _held_out(
    params: EvaluateParams, tags: dict[str, str]
) -> tuple[pd.DataFrame, pd.Series, float]:
    """The shared window's label events joined with this version's own features."""
    config = training.config_from_tags(tags)
    labels = read_events(lake_source(params.label_source), start=params.window_start)
    labels = labels[labels[config.timestamp_column] <= params.window_end]
    store = store_for(params.repo_path, params.store_profile)
    frame = training.build_training_set(store, labels, config).frame
    return frame, frame[config.label_column].astype(int), float(tags.get("threshold", 0.5))


@server_task("evaluate-version", retries=2, retry_delay_seconds=[2, 10])
def evaluate_version(
    params: EvaluateParams, model_name: str, version: str, *, with_plots: bool = False
) -> evaluation.EvaluationResult:
    """Score one version with its own feature service on the shared window (plots optional)."""
    client = mlflow_client()
    model_version = client.get_model_version(model_name, version)
    frame, y, threshold = _held_out(params, model_version.tags)
    model = load_model_version(model_name, version)
    slices = [c for c in params.slice_columns if c in frame.columns]
    result = evaluation.evaluate(
        model,
        frame,
        y,
        threshold,
        slices,
        version=version,
        window=f"{params.window_start:%Y-%m-%dT%H:%M}/{params.window_end:%Y-%m-%dT%H:%M}",
        min_slice_rows=params.gate.min_slice_rows,
    )
    if with_plots:
        with tempfile.TemporaryDirectory(prefix="mlre-eval-") as tmp:
            title = f"{model_name} v{version} held-out"
            for path in evaluation.save_plots(
                y, evaluation.score(model, frame), threshold, Path(tmp), title
            ):
                client.log_artifact(model_version.run_id, str(path), artifact_path="evaluation")
    return result


@server_task("record-decision", retries=3, retry_delay_seconds=[2, 5, 15])
def record_decision(model_name: str, version: str, decision: evaluation.GateDecision) -> None:
    """Decision tags on the version; `challenger` alias only when the gate passed."""
    client = mlflow_client()
    for key, value in evaluation.decision_tags(decision).items():
        client.set_model_version_tag(model_name, version, key, value)
    if decision.passed:
        registry.mark_challenger(client, model_name, version, decision.reasons)
    else:
        registry.record_refusal(client, model_name, version, decision.reasons)


def _check_inputs(params: EvaluateParams, model_name: str) -> None:
    """Refuse a bad window or an unknown model/version before any task runs (or retries)."""
    check_window(params.window_start, params.window_end, names=("window_start", "window_end"))
    client = mlflow_client()
    registry.get_model(client, model_name)
    registry.get_version(client, model_name, params.version)


@flow(name="evaluate-model", log_prints=True, **slis.flow_run_hooks())
def evaluate_model(params: EvaluateParams) -> GateOutcome:
    """Judge a candidate against the champion; tag the decision, alias passing versions."""
    model_name = params.model_name or get_settings().model_name
    _check_inputs(params, model_name)
    champion = registry.champion_version(mlflow_client(), model_name)
    champion_version = champion.version if champion and champion.version != params.version else None
    candidate = evaluate_version(params, model_name, params.version, with_plots=True)
    incumbent = evaluate_version(params, model_name, champion_version) if champion_version else None
    decision = evaluation.gate(candidate, incumbent, params.gate)
    if not params.dry_run:
        record_decision(model_name, params.version, decision)
    markdown = evaluation.decision_markdown(decision, candidate, incumbent)
    if params.dry_run:
        markdown = "> **Dry run**: nothing was written to the registry.\n\n" + markdown
    create_markdown_artifact(key="promotion-gate", markdown=markdown)
    create_table_artifact(
        key="metrics-vs-champion",
        table=[
            {
                "metric": name,
                "candidate": round(value, 5),
                "champion": round(incumbent.metrics.get(name, float("nan")), 5)
                if incumbent
                else None,
            }
            for name, value in candidate.metrics.items()
        ],
        description=f"{model_name} v{params.version} vs champion "
        f"{'v' + champion_version if champion_version else '(none)'} on {candidate.window}",
    )
    return GateOutcome(
        model_name,
        params.version,
        champion_version,
        decision.passed,
        decision.reasons,
        params.dry_run,
    )

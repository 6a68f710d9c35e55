"""Flow `ml-pipeline`: the lifecycle as subflows. It holds no logic of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from flows import slis
from flows.consistency import ConsistencyParams
from flows.evaluation import EvaluateParams, GateOutcome, evaluate_model
from flows.features import feature_pipeline
from flows.inference import BatchInferenceParams, batch_inference
from flows.materialize import MaterializeParams
from flows.promotion import promote_model
from flows.training import TrainParams, train_model
from mlre import evaluation
from mlre.cost import cost_rows
from mlre.settings import get_settings

T = TypeVar("T")


class PipelineParams(BaseModel):
    """Every stage's parameters; defaults run the demo end to end."""

    materialize: MaterializeParams = Field(default_factory=MaterializeParams)
    consistency: ConsistencyParams = Field(default_factory=ConsistencyParams)
    train: TrainParams = Field(default_factory=TrainParams)
    gate: evaluation.GateConfig = Field(default_factory=evaluation.GateConfig)
    auto_promote: bool = Field(True, description="Promote the challenger when the gate passes.")
    dry_run: bool = Field(False, description="Evaluate and report without touching the registry.")
    inference: BatchInferenceParams = Field(default_factory=BatchInferenceParams)


@dataclass(frozen=True)
class PipelineSummary:
    """What happened, for the CLI and the run's result."""

    version: str
    gate: GateOutcome
    promoted: bool
    champion_version: str | None
    scored: object


class _Stopwatch:
    """Seconds per stage of one run, for its cost table."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.seconds[stage] = time.perf_counter() - started


def _report_cost(stopwatch: _Stopwatch, device: str) -> None:
    settings = get_settings()
    create_table_artifact(
        key="pipeline-cost",
        table=cost_rows(stopwatch.seconds, settings.instance_type, settings.instance_hourly_usd),
        description=f"Wall time per stage on node type {settings.instance_type or 'unknown'} "
        f"(training on {device}); USD figures are ESTIMATES from list prices "
        "(Settings.instance_hourly_usd), not a bill.",
    )


@flow(name="ml-pipeline", log_prints=True, **slis.flow_run_hooks())
def ml_pipeline(params: PipelineParams | None = None) -> PipelineSummary:
    """Features -> consistency -> train -> evaluate -> promote (or refuse) -> batch inference."""
    params = params or PipelineParams()
    stopwatch = _Stopwatch()
    stopwatch.run("features", lambda: feature_pipeline(params.materialize, params.consistency))
    trained = stopwatch.run("train", lambda: train_model(params.train))
    outcome = stopwatch.run(
        "evaluate",
        lambda: evaluate_model(
            EvaluateParams(
                repo_path=params.train.repo_path,
                store_profile=params.train.store_profile,
                model_name=trained.model_name,
                version=trained.version,
                label_source=params.train.label_source,
                window_start=trained.test_start,
                window_end=trained.test_end,
                gate=params.gate,
                dry_run=params.dry_run,
            )
        ),
    )
    promote = outcome.passed and params.auto_promote and not params.dry_run
    if promote:
        promote_model(trained.model_name, trained.version, reason=outcome.reasons[0])
    champion = trained.version if promote else outcome.champion_version
    scored = None
    if champion:  # the very first model was refused: nothing may serve predictions yet
        inference_params = params.inference.model_copy(update={"model_name": trained.model_name})
        scored = stopwatch.run("batch inference", lambda: batch_inference(inference_params))
    _report_cost(stopwatch, trained.device)
    return PipelineSummary(trained.version, outcome, promote, champion, scored)

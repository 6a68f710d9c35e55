"""What `mlre demo` runs on the local platform, and the summary it prints."""

from __future__ import annotations

from collections.abc import Callable

from flows.pipeline import PipelineSummary, ml_pipeline
from mlre.settings import Settings


def flow_run_url(settings: Settings, flow_run_id: object) -> str:
    """The Prefect UI page of a flow run."""
    return f"{settings.prefect_ui_url}/runs/flow-run/{flow_run_id}"


def model_url(settings: Settings, version: str | None = None) -> str:
    """The MLflow UI page of the registered model (or one of its versions)."""
    base = f"{settings.mlflow_tracking_uri}/#/models/{settings.model_name}"
    return f"{base}/versions/{version}" if version else base


def summary_lines(settings: Settings, summary: PipelineSummary, run_url: str) -> list[str]:
    """The lines a person reads at the end of the demo."""
    gate = summary.gate
    verdict = "PROMOTED to champion" if summary.promoted else "REFUSED (champion unchanged)"
    lines = [
        f"model {settings.model_name} version {summary.version}: {verdict}",
        f"  judged against champion: {gate.champion_version or '(none: first model)'}",
        *(f"  - {reason}" for reason in gate.reasons[:6]),
        f"champion now: version {summary.champion_version or '(none)'}",
    ]
    if summary.scored:
        lines.append(
            f"batch inference: {summary.scored['scored']:,} predictions -> "
            f"{summary.scored['partition']}"
        )
    return [
        *lines,
        "",
        f"Prefect UI (this run, its subflows and artifacts): {run_url}",
        f"MLflow UI (the registered model and its aliases):  {model_url(settings)}",
        "Run `make demo` again to train a challenger against this champion; `make down` stops.",
    ]


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> list[str]:
    """Run the ml-pipeline against the local servers; return the summary lines."""
    echo("running ml-pipeline: materialize -> consistency -> train -> evaluate -> promote -> infer")
    state = ml_pipeline(return_state=True)
    summary = state.result()
    return summary_lines(settings, summary, flow_run_url(settings, state.state_details.flow_run_id))

"""What `mlre demo` runs on the local platform, and the summary it prints."""

from __future__ import annotations

from collections.abc import Callable

from flows.features import feature_pipeline
from mlre.settings import Settings


def flow_run_url(settings: Settings, flow_run_id: object) -> str:
    """The Prefect UI page of a flow run."""
    return f"{settings.prefect_ui_url}/runs/flow-run/{flow_run_id}"


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> list[str]:
    """Run the pipeline against the local servers; return the summary lines."""
    echo("running feature-pipeline (materialize -> consistency) ...")
    state = feature_pipeline(return_state=True)
    written, decision = state.result()
    keys = sum(r.keys for r in written)
    verdict = "consistent" if decision.consistent else "INCONSISTENT"
    return [
        f"features: {keys:,} keys materialized; online/offline {verdict} "
        f"(mismatch rate {decision.mismatch_rate:.3%})",
        f"Prefect UI: {flow_run_url(settings, state.state_details.flow_run_id)}",
        f"MLflow UI:  {settings.mlflow_tracking_uri}",
        "Stop the platform with: make down",
    ]

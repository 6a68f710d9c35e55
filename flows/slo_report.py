"""Flow `slo-report`: every SLO's error budget, read from Prometheus, as a Prefect UI table."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from flows import slis
from flows._common import server_task
from mlre.settings import PROJECT_ROOT, get_settings
from mlre.slo.policy import read_slo_statuses
from mlre.slo.status import SloStatus, budget_exhausted, table_rows


class SloReportParams(BaseModel):
    """Where the SLOs and their series live (defaults: the project's specs, the settings')."""

    slo_dir: str = Field(str(PROJECT_ROOT / "slos"), description="Folder of SLO spec files.")
    prometheus_url: str | None = Field(
        None, description="Prometheus (default: MLRE_PROMETHEUS_URL, else the local one)."
    )


@server_task("read-slo-status", retries=2, retry_delay_seconds=[5, 30])
def read_slo_status(params: SloReportParams) -> list[SloStatus]:
    """Objective, SLI, budget left, burn rates and firing alerts of every SLO."""
    url = params.prometheus_url or get_settings().prometheus_endpoint
    return read_slo_statuses(url, Path(params.slo_dir))


@flow(name="slo-report", log_prints=True, **slis.flow_run_hooks())
def slo_report(params: SloReportParams | None = None) -> list[SloStatus]:
    """Publish the error-budget table; exhausted budgets are named in a markdown artifact."""
    params = params or SloReportParams()
    statuses = read_slo_status(params)
    create_table_artifact(
        key="slo-error-budgets",
        table=table_rows(statuses),
        description="Every SLO: objective, SLI over the last hour, 30-day budget left, burn "
        "rates (1x spends the budget in exactly 30 days), firing alerts.",
    )
    spent = budget_exhausted(statuses)
    lines = ["# Error budgets", ""]
    if spent:
        lines += ["Spent (risky changes should wait, see the runbooks):", ""]
        lines += [f"- **{s.service}/{s.name}**: {s.budget_remaining:.1%} left" for s in spent]
    else:
        lines.append("No SLO has spent its 30-day error budget.")
    no_data = [f"{s.service}/{s.name}" for s in statuses if not s.has_data]
    if no_data:
        lines += ["", f"No data yet (nothing pushed or scraped): {', '.join(no_data)}."]
    create_markdown_artifact(key="slo-budget-verdict", markdown="\n".join(lines))
    return statuses

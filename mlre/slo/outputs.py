"""The committed files generated from `slos/`: the two rule profiles and the dashboards.

`committed_outputs` is the one definition of what `mlre slo generate` writes; a unit test
compares it with what is committed, so the files never drift from the specs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mlre.atomic import write_atomic
from mlre.settings import PROJECT_ROOT
from mlre.slo.dashboards import generate_dashboards, render_dashboard
from mlre.slo.rules import render_rules
from mlre.slo.spec import SloSpec

SPECS_DIR = PROJECT_ROOT / "slos"
RUNBOOKS_DIR = PROJECT_ROOT / "runbooks"
RULES_FILE = Path("deploy/prometheus/slo-rules.yaml")  # every SLO (the cloud's PrometheusRule)
LOCAL_RULES_FILE = Path("deploy/prometheus/slo-rules.local.yaml")  # without cloud-only SLOs
DASHBOARDS_DIR = Path("deploy/grafana")
# Repository-relative, like every link in this project; deployments pass their own with
# `mlre slo generate --runbook-base-url https://.../runbooks --output ...`.
DEFAULT_RUNBOOK_BASE_URL = "runbooks"
REGENERATE = "mlre slo generate"
# The drill profile: every window divided by 60 (the page tier's 5m and 1h become 5 s and 60 s),
# for a Prometheus that scrapes and evaluates every second; a page fires seconds into an outage.
DRILL_TIME_SCALE = 60


def committed_outputs(
    specs: Sequence[SloSpec], *, runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
) -> dict[Path, str]:
    """`{repository-relative path: text}` of every file generated from the specs."""
    outputs = {
        RULES_FILE: render_rules(specs, runbook_base_url=runbook_base_url),
        LOCAL_RULES_FILE: render_rules(
            specs, runbook_base_url=runbook_base_url, include_cloud=False
        ),
    }
    for name, dashboard in generate_dashboards(specs).items():
        outputs[DASHBOARDS_DIR / name] = render_dashboard(dashboard)
    return outputs


def write_outputs(outputs: Mapping[Path, str], root: Path = PROJECT_ROOT) -> list[Path]:
    """Write each output under `root` atomically; remove generated dashboards no spec makes."""
    written = []
    for relative, text in outputs.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_atomic(target, text))
    wanted = {root / relative for relative in outputs}
    for stale in sorted((root / DASHBOARDS_DIR).glob("mlre-slo-*.json")):
        if stale not in wanted:
            stale.unlink()
    return written

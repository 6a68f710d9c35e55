"""The drill platform and the loop every drill follows (bench/drills/__main__.py runs them).

The platform is the one `mlre up` + `mlre deploy` build, in its own home and on free ports:
Prefect server (events, automations) and a process worker, MLflow, the alert relay, Pushgateway,
Alertmanager and Prometheus evaluating the generated SLO rules with every window divided by
TIME_SCALE (drill timing: 1 s scrapes and evaluations, Alertmanager within a second), scraping a
prediction service on a port reserved for the serving drills. Per scenario a drill records how
long the alert took, which remediation run it started and how that run ended, whether the SLI
recovered (its error ratio back to 0 and the page resolved; the slow-burn ticket tier's 6 h window
still holds the incident for 6 scaled minutes, so it is not waited for) and whether anything
already stored was lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlre import local_platform
from mlre.monitoring_config import DRILL, MonitoringSetup
from mlre.prometheus_api import instant_query
from mlre.settings import PROJECT_ROOT, Settings, get_settings
from mlre.slo.outputs import DEFAULT_RUNBOOK_BASE_URL
from mlre.slo.rules import render_rules
from mlre.slo.spec import load_specs
from mlre.supervisor import free_port
from mlre.waiting import wait_until

STATE_ROOT = PROJECT_ROOT / ".mlre" / "drills"
TIME_SCALE = 60  # the page tier's 1h/5m windows become 60 s/5 s
ALERT_TIMEOUT_S = 300.0  # deadlines bound a broken drill; the figures are what was measured
RUN_TIMEOUT_S = 600.0
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SOURCE_SIZE = ("--customers", "1500", "--days", "16")
PORTS = ("prefect", "mlflow", "prometheus", "alertmanager", "pushgateway", "relay")


@dataclass
class DrillResult:
    """One scenario, as a person reads it in the table."""

    scenario: str
    injected: str
    alert: str
    alert_fired: bool = False
    alert_after_s: float | None = None
    remediation: str = ""
    run_state: str = ""
    outcome: str = ""  # remediated | escalated (from the run's artifacts)
    expected: str = "remediated"  # or escalated, where no automatic action is safe
    sli_recovered: bool = False
    recovered_after_s: float | None = None
    nothing_lost: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        healed = self.outcome == self.expected and self.sli_recovered
        return self.alert_fired and self.run_state == "COMPLETED" and healed and self.nothing_lost


@dataclass
class DrillPlatform:
    """A private platform: its settings, and the environment its processes and this one use."""

    settings: Settings
    env: dict[str, str]
    echo: Callable[[str], None]
    serving_port: int  # Prometheus scrapes a prediction service here (job mlre-serving)

    def mlre(self, *args: str, expect_failure: bool = False) -> str:
        """Run the `mlre` CLI against this platform; its output (an unexpected exit raises)."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "mlre"), *args],
            env=self.env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if (done.returncode != 0) != expect_failure:
            raise RuntimeError(
                f"mlre {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}"
            )
        return done.stdout + done.stderr

    def query(self, promql: str) -> list[Any]:
        return instant_query(self.settings.prometheus_endpoint, promql, timeout_s=10)

    def firing(self, alert: str, **labels: str) -> list[Any]:
        selector = ",".join([f'alertname="{alert}"', 'alertstate="firing"'] +
                            [f'{k}="{v}"' for k, v in labels.items()])  # fmt: skip
        return self.query(f"ALERTS{{{selector}}}")


def _env(settings: Settings, ports: dict[str, int]) -> dict[str, str]:
    env = {
        **os.environ,
        **settings.client_env(),
        **{f"MLRE_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        "MLRE_MONITORING": "true",
        "MLRE_ALERT_RELAY": "true",
        "MLRE_ALERT_WEBHOOK_URL": "",
        "MLRE_PROMETHEUS_URL": "",
        "MLRE_ALERTMANAGER_URL": "",
        "MLRE_PUSHGATEWAY_URL": "",
    }
    env.pop("MLRE_MLFLOW_URI", None)
    return env


@contextlib.contextmanager
def _process_env(env: dict[str, str]) -> Iterator[None]:
    """This process talks to the drill platform for the block (Prefect client, settings)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


@contextlib.contextmanager
def drill_platform(
    root: Path = STATE_ROOT, echo: Callable[[str], None] = print, keep: bool = False
) -> Iterator[DrillPlatform]:
    """Up, deployed (every deployment, the automations, a worker) and torn down by PID."""
    home = root / f"drill-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in PORTS}
    settings = Settings(
        home=home, **{f"{name}_port": port for name, port in ports.items()},
        monitoring=True, alert_relay=True, alert_webhook_url="", prometheus_url="",
        alertmanager_url="", pushgateway_url="", mlflow_uri="", health_timeout_s=180,
    )  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    rules = home / "slo-rules.drill.yaml"
    rules.write_text(
        render_rules(
            load_specs(PROJECT_ROOT / "slos"),
            time_scale=TIME_SCALE,
            runbook_base_url=DEFAULT_RUNBOOK_BASE_URL,
            include_cloud=False,
        )
    )
    serving_port = free_port()
    setup = MonitoringSetup(
        timing=DRILL, rule_files=(rules,), serving_targets=(f"{settings.host}:{serving_port}",)
    )
    env = _env(settings, ports)
    try:
        with _process_env(env):
            from flows import deploy

            echo(f"drill platform in {home}")
            local_platform.up(settings, echo, monitoring=setup)
            deploy.ensure_local_pool()
            echo("deploying every flow in prefect.yaml and the automations ...")
            deploy.deploy_all(settings)
            deploy.ensure_platform_automations(settings)
            deploy.ensure_worker(settings)
            yield DrillPlatform(settings, env, echo, serving_port)
    finally:
        local_platform.down(settings)
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


# ---- following the loop ----------------------------------------------------------------------


def remediation_runs(action: str, labels: dict[str, str]) -> list[Any]:
    """Flow runs of `remediate/<action>` whose alert carries every one of `labels`, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[action]))
        )
    return [
        run
        for run in runs
        if labels.items() <= ((run.parameters.get("alert") or {}).get("labels") or {}).items()
    ]


def final_state(flow_run_id: Any, timeout_s: float = RUN_TIMEOUT_S) -> str:
    from prefect.client.orchestration import get_client

    def ended() -> str | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        name = state.type.value if state else ""
        return name if name in TERMINAL else None

    return wait_until(ended, timeout_s=timeout_s, what="the remediation run's end", interval_s=1)


def outcome_of(flow_run_id: Any) -> str:
    """remediated | escalated, from the artifacts the run published."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    keys = {artifact.key for artifact in artifacts}
    return "escalated" if "escalation" in keys else "remediated" if "remediation" in keys else "?"


def follow(
    p: DrillPlatform,
    result: DrillResult,
    *,
    alert: str,
    action: str,
    labels: dict[str, str],
    healthy: str,
    began: float,
    then: Callable[[], None] | None = None,
) -> None:
    """The loop after an injection: the page (`alert` with `labels`), the `remediate/<action>`
    run it starts and its end, `then` (what the schedule or, after an escalation, the person
    paged would do next), then the SLI healthy again (`healthy`, a PromQL filter that returns a
    series once it holds) and the page resolved. Fills `result`; a step that never comes leaves
    its fields unset."""
    fired = wait_until(
        lambda: p.firing(alert, severity="page", **labels),
        timeout_s=ALERT_TIMEOUT_S, what=f"{alert}", interval_s=0.5,
    )  # fmt: skip
    result.alert_fired, result.alert_after_s = bool(fired), round(time.monotonic() - began, 1)
    p.echo(f"  paged after {result.alert_after_s} s; waiting for remediate/{action}")
    (run, *_) = wait_until(
        lambda: remediation_runs(action, labels),
        timeout_s=ALERT_TIMEOUT_S, what=f"the remediate/{action} run", interval_s=1,
    )  # fmt: skip
    result.remediation = f"remediate/{action} ({run.name})"
    result.run_state = final_state(run.id)
    result.outcome = outcome_of(run.id)
    p.echo(f"  {run.name}: {result.run_state}, {result.outcome}")
    if then is not None:
        then()
    with contextlib.suppress(Exception):  # not recovered: the result says so
        wait_until(lambda: p.query(healthy), timeout_s=ALERT_TIMEOUT_S, what="SLI", interval_s=1)
        wait_until(
            lambda: not p.firing(alert, severity="page", **labels),
            timeout_s=ALERT_TIMEOUT_S, what="the page resolved", interval_s=1,
        )  # fmt: skip
        result.sli_recovered = True
        result.recovered_after_s = round(time.monotonic() - began, 1)


def run_deployment(name: str, parameters: dict[str, Any] | None = None) -> str:
    """Trigger a deployment through the platform's worker, as its schedule would; its end state."""
    from flows import deploy

    return final_state(deploy.trigger(name, parameters).id)


def landed(p: DrillPlatform) -> None:
    """The demo sources in the lake, once per platform (small: drills are about the loop)."""
    if not (p.settings.lake_dir / "sources").exists():
        p.echo("landing the source data ...")
        p.mlre("generate", *SOURCE_SIZE)

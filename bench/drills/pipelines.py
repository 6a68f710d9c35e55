"""Pipeline drills: a flow run whose node is lost.

- worker-killed-mid-flow: the Prefect worker and the `ml-pipeline/weekly` run it started are
  SIGKILLed while a subflow runs, as when their node is lost. Nothing is left to report a final
  state: the zombie automation sets the run Crashed once its heartbeats stop (3 x 30 s). The
  worker comes back (Kubernetes restarts its pod; locally `mlre deploy` starts one), Prefect's
  Crashed event starts `remediate/rerun-crashed`, which pushes the crash to the pipeline SLI and
  runs the deployment again with the same parameters; the re-run completes and the flow-run SLI
  of the deployment is back to 1.
"""

from __future__ import annotations

import time
from typing import Any

from bench.drills.platform import (
    DrillPlatform,
    DrillResult,
    final_state,
    landed,
    outcome_of,
    remediation_runs,
)
from mlre.waiting import wait_until

PIPELINE = "ml-pipeline/weekly"
START_TIMEOUT_S = 300.0  # scheduled -> running subflow with heartbeats, on a busy machine
SLACK_S = 120.0  # past the zombie window: the trigger service's ticks and a busy machine


def worker_killed_mid_flow(p: DrillPlatform) -> DrillResult:
    """Worker + flow run SIGKILLed -> zombie Crashed -> rerun-crashed -> the re-run completes."""
    import psutil

    from flows import automations, deploy
    from mlre import local_platform, supervisor
    from tests.support.prefect_runs import (
        armed,
        deployment_runs,
        heartbeats,
        lose_node,
        run_processes,
    )

    result = DrillResult(
        "worker-killed-mid-flow",
        f"the Prefect worker and the {PIPELINE} run it started SIGKILLed mid-flow",
        "zombie automation: run Crashed (no heartbeat)",
    )
    landed(p)
    before = _stored(p)
    run = deploy.trigger(PIPELINE)
    record = supervisor.read_pid_record(local_platform.pid_path(p.settings, deploy.WORKER))
    if record is None:
        raise RuntimeError("the drill platform has no worker to kill")
    worker = psutil.Process(record.pid)
    p.echo(f"{PIPELINE} ({run.name}) started; killing its worker once a subflow heartbeats ...")
    runners = wait_until(
        lambda: run_processes(worker, run.id), timeout_s=START_TIMEOUT_S, what="the run's process"
    )
    wait_until(
        lambda: heartbeats(run.id) and armed(run.id), timeout_s=START_TIMEOUT_S,
        what="heartbeats of the run and a running subflow", interval_s=0.5,
    )  # fmt: skip
    lose_node(worker, runners)
    began = time.monotonic()
    window = automations.zombie_window(p.settings.flow_heartbeat_s)
    p.echo(f"worker and run SIGKILLed; the zombie automation has {window} of silence to see it")
    crashed = wait_until(
        lambda: _state(run.id) == "CRASHED", timeout_s=window.total_seconds() + SLACK_S,
        what="the run Crashed", interval_s=1,
    )  # fmt: skip
    result.alert_fired, result.alert_after_s = bool(crashed), round(time.monotonic() - began, 1)
    p.echo(f"  Crashed after {result.alert_after_s} s; the worker comes back (mlre deploy)")
    deploy.ensure_worker(p.settings)
    labels = {"flow_run_id": f"prefect.flow-run.{run.id}"}
    (remediation, *_) = wait_until(
        lambda: remediation_runs("rerun-crashed", labels), timeout_s=300,
        what="the remediate/rerun-crashed run", interval_s=1,
    )  # fmt: skip
    result.remediation = f"remediate/rerun-crashed ({remediation.name})"
    result.run_state = final_state(remediation.id)
    result.outcome = outcome_of(remediation.id)
    p.echo(f"  {remediation.name}: {result.run_state}, {result.outcome}")
    (rerun, *_) = wait_until(
        lambda: [r for r in deployment_runs(run.deployment_id) if "mlre-rerun" in r.tags],
        timeout_s=120, what="the re-run", interval_s=1,
    )  # fmt: skip
    rerun_state = final_state(rerun.id)
    p.echo(f"  re-run {rerun.name}: {rerun_state}")
    succeeded = 'mlre_flow_run_success{flow="ml-pipeline", deployment="weekly"} == 1'
    if rerun_state == "COMPLETED" and rerun.parameters == run.parameters:
        wait_until(lambda: p.query(succeeded), timeout_s=120, what="the flow-run SLI", interval_s=1)
        result.sli_recovered = True
        result.recovered_after_s = round(time.monotonic() - began, 1)
    after = _stored(p)
    result.nothing_lost = all(before[key] <= after[key] for key in before)
    result.notes.append(
        f"re-run {rerun.name} {rerun_state} with the crashed run's parameters; model versions "
        f"{sorted(before['versions'])} -> {sorted(after['versions'])}, online entity keys "
        f"{len(before['online_keys'])} -> {len(after['online_keys'])}"
    )
    return result


def _state(run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type.value if state else "PENDING"


def _stored(p: DrillPlatform) -> dict[str, set[str]]:
    """What a lost node must not take with it: model versions, online rows of the daily view."""
    from mlflow import MlflowClient

    from bench.drills.features import online_keys

    client = MlflowClient(p.settings.mlflow_tracking_uri)
    versions = client.search_model_versions(f"name='{p.settings.model_name}'")
    try:
        keys = online_keys(p.settings, "customer_daily_stats_fv")
    except Exception:  # nothing materialized yet: no table
        keys = set()
    return {"versions": {str(v.version) for v in versions}, "online_keys": keys}

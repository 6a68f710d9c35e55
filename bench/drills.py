"""Chaos drills (`make drill`): inject a real failure into a private local platform and follow the
self-healing loop end to end, with every SLO window divided by TIME_SCALE.

The platform is the one `mlre up` + `mlre deploy` build, in its own home and on free ports:
Prefect server (events, automations) and a process worker, MLflow, the alert relay, Pushgateway,
Alertmanager and Prometheus evaluating the generated SLO rules scaled down (drill timing: 1 s
scrapes and evaluations, Alertmanager within a second). Per scenario the drill records how long
the alert took, which remediation run it started and how that run ended, whether the SLI
recovered (its error ratio back to 0 and the page resolved; the slow-burn ticket tier's 6 h window
still holds the incident for 6 scaled minutes, so it is not waited for) and whether anything
already stored was lost.

    python -m bench.drills [SCENARIO ...] [--keep] [--results PATH]
    (results: bench/results/drills.json and a table; exit 1 when a drill did not heal)

Scenarios:
- stale-feature-view: the hourly materialization stopped 30 hours ago while the source data kept
  landing. The daily view's freshness SLO pages; `remediate/backfill-features` catches the view
  up from where it stopped to now; the freshness SLI recovers and the page resolves.
- corrupted-online-row: wrong values written over 5 % of a view's online rows. The consistency
  check finds them and its SLO pages; `remediate/repair-consistency` re-materializes the compared
  window and re-checks; the mismatch SLI recovers and every corrupted row holds its value again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlre import local_platform, slis
from mlre.monitoring_config import DRILL, MonitoringSetup
from mlre.prometheus_api import instant_query
from mlre.settings import PROJECT_ROOT, Settings, get_settings
from mlre.slo.outputs import DEFAULT_RUNBOOK_BASE_URL
from mlre.slo.rules import render_rules
from mlre.slo.spec import load_specs
from mlre.supervisor import free_port
from mlre.waiting import wait_until

RESULTS_PATH = PROJECT_ROOT / "bench" / "results" / "drills.json"
STATE_ROOT = PROJECT_ROOT / ".mlre" / "drills"
TIME_SCALE = 60  # the page tier's 1h/5m windows become 60 s/5 s
ALERT_TIMEOUT_S = 300.0  # deadlines bound a broken drill; the figures are what was measured
RUN_TIMEOUT_S = 600.0
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
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
    sli_recovered: bool = False
    recovered_after_s: float | None = None
    nothing_lost: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        healed = self.outcome == "remediated" and self.sli_recovered
        return self.alert_fired and self.run_state == "COMPLETED" and healed and self.nothing_lost


@dataclass
class DrillPlatform:
    """A private platform: its settings, and the environment its processes and this one use."""

    settings: Settings
    env: dict[str, str]
    echo: Callable[[str], None]

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

    def paging(self, alert: str, view: str) -> list[Any]:
        """The page-severity `alert` about a feature view, while it fires."""
        return self.firing(alert, severity="page", feature_view=view)

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
    setup = MonitoringSetup(timing=DRILL, rule_files=(rules,), serving_targets=())
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
            yield DrillPlatform(settings, env, echo)
    finally:
        local_platform.down(settings)
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


# ---- following the loop ----------------------------------------------------------------------


def remediation_runs(action: str, label: str, value: str) -> list[Any]:
    """Flow runs of `remediate/<action>` whose alert carries label=value, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[action]))
        )
    return [
        run
        for run in runs
        if (run.parameters.get("alert") or {}).get("labels", {}).get(label) == value
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
    view: str,
    healthy: str,
    began: float,
) -> None:
    """The loop after an injection: the page, the `remediate/<action>` run it starts and its end,
    then the SLI healthy again (`healthy`, a PromQL filter that returns a series once it holds)
    and the page resolved. Fills `result`; a step that never comes leaves its fields unset."""
    fired = wait_until(
        lambda: p.paging(alert, view), timeout_s=ALERT_TIMEOUT_S, what=f"{alert}", interval_s=0.5
    )
    result.alert_fired, result.alert_after_s = bool(fired), round(time.monotonic() - began, 1)
    p.echo(f"  paged after {result.alert_after_s} s; waiting for remediate/{action}")
    (run, *_) = wait_until(
        lambda: remediation_runs(action, "feature_view", view),
        timeout_s=ALERT_TIMEOUT_S, what=f"the remediate/{action} run", interval_s=1,
    )  # fmt: skip
    result.remediation = f"remediate/{action} ({run.name})"
    result.run_state = final_state(run.id)
    result.outcome = outcome_of(run.id)
    p.echo(f"  {run.name}: {result.run_state}, {result.outcome}")
    with contextlib.suppress(Exception):  # not recovered: the result says so
        wait_until(lambda: p.query(healthy), timeout_s=ALERT_TIMEOUT_S, what="SLI", interval_s=1)
        wait_until(
            lambda: not p.paging(alert, view),
            timeout_s=ALERT_TIMEOUT_S, what="the page resolved", interval_s=1,
        )  # fmt: skip
        result.sli_recovered = True
        result.recovered_after_s = round(time.monotonic() - began, 1)


# ---- scenarios -------------------------------------------------------------------------------


def stale_feature_view(p: DrillPlatform, view: str = "customer_daily_stats_fv") -> DrillResult:
    """Materialization stopped 30 h ago while data kept landing -> freshness page -> backfill."""
    from mlre.features.store import open_store

    result = DrillResult(
        "stale-feature-view",
        f"{view} last materialized 30 h ago (the schedule stopped), source data up to now",
        "FeatureFreshnessBudgetBurn (page)",
    )
    p.echo("landing the source data and materializing it up to 30 hours ago ...")
    p.mlre("generate")
    stopped = datetime.now(UTC) - timedelta(hours=30)
    p.mlre("materialize", "--end", stopped.isoformat(), "--feature-view", view)
    store = open_store(p.settings)
    newest = store.get_feature_view(view, allow_registry_cache=False).most_recent_end_time
    keys_before = _online_keys(p.settings, view)
    # What that last run pushed when it ran: the view's freshness as of then. (A run that ends
    # in the past publishes no freshness: flows/materialize.py.)
    pushed = slis.push(
        p.settings.pushgateway_endpoint,
        [slis.materialization("materialize-features", view, succeeded=True, newest_event=newest)],
    )
    assert pushed, "the Pushgateway refused the watermark"
    began = time.monotonic()
    p.echo(f"{view} is {(datetime.now(UTC) - newest).total_seconds() / 3600:.1f} h old; waiting")
    fresh = f'time() - mlre_feature_newest_event_timestamp_seconds{{feature_view="{view}"}} < 93600'
    follow(p, result, alert="FeatureFreshnessBudgetBurn", action="backfill-features", view=view,
           healthy=fresh, began=began)  # fmt: skip
    keys_after = _online_keys(p.settings, view)
    result.nothing_lost = keys_before <= keys_after
    result.notes.append(f"online entity keys of {view}: {len(keys_before)} -> {len(keys_after)}")
    return result


def corrupted_online_row(
    p: DrillPlatform,
    view: str = "customer_daily_stats_fv",
    feature: str = "avg_amount_30d",
    share: float = 0.05,
) -> DrillResult:
    """Wrong values in the online store -> consistency check -> page -> repair-consistency."""
    result = DrillResult(
        "corrupted-online-row",
        f"{feature} overwritten with wrong values in {share:.0%} of {view}'s online rows",
        "FeatureConsistencyBudgetBurn (page)",
    )
    if not (p.settings.lake_dir / "sources").exists():
        p.mlre("generate")
    p.mlre("materialize", "--feature-view", view)
    keys_before = _online_keys(p.settings, view)
    corrupted = _corrupt(p.settings, view, feature, share)
    began = time.monotonic()  # the alert's delay includes the check that finds the rows
    p.echo(f"corrupted {len(corrupted)} online rows; the consistency check finds them ...")
    checked = p.mlre("check-consistency", "--feature-view", view, expect_failure=True)
    result.notes.append(checked.strip().splitlines()[-1][:200] if checked.strip() else "")
    consistent = f'max(mlre_feature_mismatch_ratio{{feature_view="{view}"}}) <= 0.001'
    follow(p, result, alert="FeatureConsistencyBudgetBurn", action="repair-consistency",
           view=view, healthy=consistent, began=began)  # fmt: skip
    still_wrong = corrupted & _values(p.settings, view, feature, corrupted).items()
    result.nothing_lost = keys_before <= _online_keys(p.settings, view) and not still_wrong
    result.notes.append(f"{len(still_wrong)} of {len(corrupted)} corrupted rows still wrong")
    return result


def _online_db(settings: Settings) -> Any:
    import sqlite3

    return contextlib.closing(sqlite3.connect(settings.data_dir / "online_store.db"))


def _corrupt(settings: Settings, view: str, feature: str, share: float) -> set[tuple[str, float]]:
    """Add 1,000 to `feature` in every 1/share-th online row of the view; (key, wrong value)."""
    from feast.protos.feast.types.Value_pb2 import Value

    table = f"fraud_detection_{view}"
    done: set[tuple[str, float]] = set()
    with _online_db(settings) as db, db:
        rows = db.execute(
            f'SELECT entity_key, value FROM "{table}" WHERE feature_name = ? ORDER BY entity_key',
            (feature,),
        ).fetchall()
        for key, blob in rows[:: max(int(1 / share), 1)]:
            value = Value.FromString(blob)
            value.double_val += 1000.0
            db.execute(
                f'UPDATE "{table}" SET value = ? WHERE entity_key = ? AND feature_name = ?',
                (value.SerializeToString(), key, feature),
            )
            done.add((key.hex(), value.double_val))
    return done


def _values(
    settings: Settings, view: str, feature: str, keys: set[tuple[str, float]]
) -> dict[str, float]:
    """The feature's online value now for the given (hex) entity keys."""
    from feast.protos.feast.types.Value_pb2 import Value

    with _online_db(settings) as db:
        return {
            key: Value.FromString(db.execute(
                f'SELECT value FROM "fraud_detection_{view}" WHERE entity_key = ? '
                "AND feature_name = ?", (bytes.fromhex(key), feature),
            ).fetchone()[0]).double_val
            for key, _ in keys
        }  # fmt: skip


def _online_keys(settings: Settings, view: str) -> set[str]:
    """Entity keys (hex) the SQLite online store holds for a view (local profile)."""
    with _online_db(settings) as db:
        rows = db.execute(f'SELECT DISTINCT entity_key FROM "fraud_detection_{view}"').fetchall()
    return {row[0].hex() for row in rows}


SCENARIOS: dict[str, Callable[[DrillPlatform], DrillResult]] = {
    "stale-feature-view": stale_feature_view,
    "corrupted-online-row": corrupted_online_row,
}


# ---- report ----------------------------------------------------------------------------------


def table(results: list[DrillResult]) -> str:
    header = "| scenario | alert | after | remediation run | outcome | SLI recovered | lost |"
    rows = [header, "|---|---|---|---|---|---|---|"]
    for r in results:
        after = f"{r.alert_after_s} s" if r.alert_after_s is not None else "never"
        back = f"yes, {r.recovered_after_s} s" if r.sli_recovered else "no"
        rows.append(
            f"| {r.scenario} | {r.alert if r.alert_fired else 'did not fire'} | {after} | "
            f"{r.remediation or '-'}: {r.run_state or '-'} | {r.outcome or '-'} | {back} | "
            f"{'nothing' if r.nothing_lost else 'SOMETHING'} |"
        )
    return "\n".join(rows)


def write_results(results: list[DrillResult], path: Path = RESULTS_PATH) -> Path:
    from mlre.atomic import write_atomic

    report = {
        "what": "chaos drills on the local platform, SLO windows divided by time_scale",
        "time_scale": TIME_SCALE,
        "timing": asdict(DRILL),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "scenarios": [{**asdict(r), "passed": r.passed} for r in results],
        "all_passed": all(r.passed for r in results),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(report, indent=2) + "\n")


def run(
    names: list[str], keep: bool = False, echo: Callable[[str], None] = print
) -> list[DrillResult]:
    results = []
    with drill_platform(echo=echo, keep=keep) as drill:
        for name in names:
            echo(f"== drill {name}")
            results.append(SCENARIOS[name](drill))
    return results


def cli(argv: list[str] | None = None) -> int:
    """`python -m bench.drills`; no `main()`, so `make bench` leaves drills to `make drill`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.drills", description=__doc__.split("\n")[0]
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"{list(SCENARIOS)}")
    parser.add_argument("--keep", action="store_true", help="keep the drill's home for reading")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="where the JSON goes")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    results = run(args.scenarios or list(SCENARIOS), keep=args.keep)
    print(table(results))
    print(f"results: {write_results(results, args.results)}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(cli())

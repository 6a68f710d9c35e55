"""The `mlre` command line: a thin layer over the core (`mlre.local_platform` and friends).

Add a subcommand by decorating a handler `(args, settings) -> exit code` with `@command(...)`,
optionally passing `configure=` to add its arguments:

    @command("demo", help="run the whole pipeline", configure=lambda p: p.add_argument("--fast"))
    def _demo(args: argparse.Namespace, settings: Settings) -> int: ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from mlre import local_platform
from mlre.errors import MlreError
from mlre.local_platform import ServiceStatus
from mlre.settings import Settings, apply_runtime_env, get_settings

Handler = Callable[[argparse.Namespace, Settings], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Subcommand:
    """One `mlre <name>` entry: its help line, its arguments and what it runs."""

    help: str
    handler: Handler
    configure: Configure | None = None


SUBCOMMANDS: dict[str, Subcommand] = {}


def command(
    name: str, *, help: str, configure: Configure | None = None
) -> Callable[[Handler], Handler]:
    """Register `handler` as `mlre <name>`."""

    def register(handler: Handler) -> Handler:
        SUBCOMMANDS[name] = Subcommand(help=help, handler=handler, configure=configure)
        return handler

    return register


def _echo(message: str) -> None:
    print(message, flush=True)


@command(
    "up",
    help="start the local Prefect, MLflow and monitoring (Prometheus, Alertmanager, Pushgateway) "
    "servers (reuses running ones)",
)
def _up(args: argparse.Namespace, settings: Settings) -> int:
    rows = local_platform.up(settings, echo=_echo)
    _print_table(rows)
    print(f"\nexport PREFECT_API_URL={settings.prefect_api_url}")
    print(f"export MLFLOW_TRACKING_URI={settings.mlflow_tracking_uri}")
    return 0


@command("down", help="stop workers, then the servers (idempotent)")
def _down(args: argparse.Namespace, settings: Settings) -> int:
    local_platform.down(settings, echo=_echo)
    return 0


@command("status", help="show each service's URL, PID and health (exit 1 unless all healthy)")
def _status(args: argparse.Namespace, settings: Settings) -> int:
    rows = local_platform.status(settings)
    _print_table(rows)
    return 0 if local_platform.services_healthy(rows, settings) else 1


def _configure_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=int, default=5_000, help="customers (default 5000)")
    parser.add_argument("--days", type=int, default=30, help="days ending last midnight UTC")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (same seed, same data)")


@command(
    "generate",
    help="generate, validate and land the demo source data",
    configure=_configure_generate,
)
def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from mlre.data.lake import demo_config, land_demo_sources

    config = demo_config(customers=args.customers, days=args.days, seed=args.seed)
    _echo(f"generating {args.customers} customers x {args.days} days (seed {args.seed}) ...")
    landed = land_demo_sources(config, settings.lake_dir, now=datetime.now(UTC))
    for name, rows in landed.rows.items():
        _echo(f"  {name:<24} {rows:>10,} rows  -> {landed.folders[name]}")
    return 0


def _configure_apply(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, help="Feast repository (default: MLRE_FEATURE_REPO)")
    parser.add_argument(
        "--profile", choices=["local", "production"], help="default: MLRE_STORE_PROFILE"
    )


@command(
    "apply",
    help="sync the Feast registry with the feature repo (what `feast apply` registers)",
    configure=_configure_apply,
)
def _apply(args: argparse.Namespace, settings: Settings) -> int:
    from mlre.features.store import apply_repo, open_store

    store = open_store(settings, args.repo, args.profile)
    repo = Path(store.config.repo_path or settings.feature_repo)
    _echo(f"applying {repo} to project {store.project!r} ...")
    summary = apply_repo(store, repo, settings)
    for kind, names in (
        ("entities", summary.entities),
        ("feature views", summary.feature_views),
        ("on-demand views", summary.on_demand_feature_views),
        ("feature services", summary.feature_services),
    ):
        _echo(f"  {kind:<17} {', '.join(names) or '-'}")
    return 0


def _configure_materialize(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["incremental", "backfill"], default="incremental")
    parser.add_argument("--start", type=_utc_datetime, help="backfill start, ISO-8601 UTC")
    parser.add_argument("--end", type=_utc_datetime, help="end, ISO-8601 UTC (default now)")
    parser.add_argument("--partitions", type=int, default=4, help="hash partitions (write tasks)")
    parser.add_argument("--feature-view", action="append", dest="feature_views")


@command("materialize", help="run the materialize-features flow", configure=_configure_materialize)
def _materialize(args: argparse.Namespace, settings: Settings) -> int:
    from flows.materialize import MaterializeParams, materialize_features

    params = MaterializeParams(
        mode=args.mode,
        start=args.start,
        end=args.end,
        partitions=args.partitions,
        feature_views=args.feature_views,
    )
    state = materialize_features(params, return_state=True)
    for result in state.result():
        _echo(
            f"  {result.feature_view} partition {result.partition}: {result.keys:,} keys "
            f"from {result.rows:,} rows in {result.seconds:.2f}s"
        )
    return 0


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-size", type=int, default=1_000)
    parser.add_argument("--max-mismatch-rate", type=float, default=0.001)
    parser.add_argument("--feature-view", action="append", dest="feature_views")


@command(
    "check-consistency",
    help="run the validate-feature-consistency flow",
    configure=_configure_check,
)
def _check(args: argparse.Namespace, settings: Settings) -> int:
    from flows.consistency import ConsistencyParams, validate_feature_consistency

    params = ConsistencyParams(
        sample_size=args.sample_size,
        max_mismatch_rate=args.max_mismatch_rate,
        feature_views=args.feature_views,
    )
    state = validate_feature_consistency(params, return_state=True)
    if state.is_failed():
        print(f"inconsistent: {state.message}", file=sys.stderr)
        return 1
    decision = state.result()
    _echo(
        f"consistent: mismatch rate {decision.mismatch_rate:.4%} "
        f"(threshold {decision.threshold:.4%})"
    )
    return 0


def _configure_promote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", nargs="?", help="version to promote (default: the challenger)")
    parser.add_argument("--model", help="registered model (default: MLRE_MODEL_NAME)")
    parser.add_argument("--reason", default="manual promotion", help="why (kept in the audit)")
    parser.add_argument("--force", action="store_true", help="promote a version the gate refused")


@command(
    "promote",
    help="move the champion alias (runs the promote-model flow)",
    configure=_configure_promote,
)
def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from flows.promotion import promote_model

    record = promote_model(args.model, args.version, args.reason, args.force)
    _echo(
        f"{args.model or settings.model_name}: champion {record.from_version} -> "
        f"{record.to_version} ({record.action})"
    )
    return 0


def _configure_rollback(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registered model (default: MLRE_MODEL_NAME)")
    parser.add_argument("--reason", required=True, help="why (kept in the audit)")


@command(
    "rollback",
    help="restore the previous champion (runs the rollback-model flow)",
    configure=_configure_rollback,
)
def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from flows.promotion import rollback_model

    record = rollback_model(args.model, args.reason)
    _echo(
        f"{args.model or settings.model_name}: champion {record.from_version} -> "
        f"{record.to_version} (rollback)"
    )
    return 0


@command(
    "history",
    help="the registered model's promotion audit trail",
    configure=lambda p: p.add_argument("--model", help="default: MLRE_MODEL_NAME"),
)
def _history(args: argparse.Namespace, settings: Settings) -> int:
    from mlflow import MlflowClient

    from mlre import registry

    name = args.model or settings.model_name
    records = registry.history(MlflowClient(settings.mlflow_tracking_uri), name)
    header = ("SEQ", "WHEN", "ACTION", "FROM", "TO", "ACTOR", "REASON")
    rows = [header] + [
        (str(r.seq), r.when, r.action, str(r.from_version or "-"), r.to_version, r.actor, r.reason)
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    if not records:
        _echo(f"(no promotions of {name!r} yet)")
    return 0


@command("deploy", help="deploy every flow in prefect.yaml to the local pool and start a worker")
def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    from flows import deploy

    created = deploy.ensure_local_pool()
    _echo(f"work pool {deploy.k8s_labels.LOCAL_WORK_POOL!r}: {'created' if created else 'exists'}")
    _echo("deploying every flow in prefect.yaml ...")
    deploy.deploy_all(settings)
    retrain, zombie, *remediations = deploy.ensure_platform_automations(settings)
    _echo(f"automation {retrain.name}: drift/degradation -> ml-pipeline/weekly")
    _echo(f"automation {zombie.name}: no heartbeat for {zombie.trigger.within} -> Crashed")
    for automation in remediations:
        action = automation.name.removeprefix("mlre-remediate-")
        _echo(f"automation {automation.name}: alert firing -> remediate/{action}")
    for name in deploy.deployment_names():
        _echo(f"  {name}")
    started = deploy.ensure_worker(settings)
    _echo(
        f"worker: {'started' if started else 'already running'} (log: .mlre/logs/worker-local.log)"
    )
    return 0


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("deployment", help="FLOW/DEPLOYMENT, e.g. ml-pipeline/weekly")
    parser.add_argument("--no-wait", action="store_true", help="trigger and return")


@command("run", help="trigger a deployment and follow it to the end", configure=_configure_run)
def _run(args: argparse.Namespace, settings: Settings) -> int:
    from flows import deploy
    from flows.demo import flow_run_url

    flow_run = deploy.trigger(args.deployment)
    _echo(f"{args.deployment}: flow run {flow_run.name} -> {flow_run_url(settings, flow_run.id)}")
    if args.no_wait:
        return 0
    state = deploy.follow(flow_run.id, _echo)
    return 0 if state == "COMPLETED" else 1


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    _configure_generate(parser)
    parser.add_argument("--regenerate", action="store_true", help="land fresh source data")


@command("demo", help="run the whole pipeline on the local platform", configure=_configure_demo)
def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from flows.demo import run_demo

    local_platform.up(settings, echo=_echo)
    if args.regenerate or not (settings.lake_dir / "sources").exists():
        _generate(args, settings)
    _deploy(args, settings)
    summary = run_demo(settings, echo=_echo)
    _echo("")
    for line in summary:
        _echo(line)
    return 0


# `mlre slo ACTION`: one subcommand, its actions registered like subcommands (`@slo_action`).
SLO_ACTIONS: dict[str, Subcommand] = {}


def slo_action(
    name: str, *, help: str, configure: Configure | None = None
) -> Callable[[Handler], Handler]:
    """Register `handler` as `mlre slo <name>`."""

    def register(handler: Handler) -> Handler:
        SLO_ACTIONS[name] = Subcommand(help=help, handler=handler, configure=configure)
        return handler

    return register


def _configure_slo(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="slo_action", required=True, metavar="ACTION")
    for name, action in SLO_ACTIONS.items():
        child = actions.add_parser(name, help=action.help, description=action.help)
        if action.configure is not None:
            action.configure(child)
        child.set_defaults(slo_handler=action.handler)


@command(
    "slo",
    help="SLOs as code (slos/*.yaml): generate rules and dashboards, show error budgets",
    configure=_configure_slo,
)
def _slo(args: argparse.Namespace, settings: Settings) -> int:
    return int(args.slo_handler(args, settings))


def _configure_slo_generate(parser: argparse.ArgumentParser) -> None:
    from mlre.slo.outputs import DEFAULT_RUNBOOK_BASE_URL, SPECS_DIR

    parser.add_argument("--specs", type=Path, default=SPECS_DIR, help="spec folder (default slos/)")
    parser.add_argument(
        "--output", type=Path, help="write one rule file here instead of the committed files"
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="divide every window (drill, e.g. 60)"
    )
    parser.add_argument("--local", action="store_true", help="leave out cloud-only SLOs")
    parser.add_argument("--runbook-base-url", default=DEFAULT_RUNBOOK_BASE_URL)


@slo_action(
    "generate",
    help="turn the SLO specs into Prometheus rules and Grafana dashboards",
    configure=_configure_slo_generate,
)
def _slo_generate(args: argparse.Namespace, settings: Settings) -> int:
    from mlre.errors import ConfigError
    from mlre.slo import outputs, write_rules
    from mlre.slo.spec import load_specs

    specs = load_specs(args.specs)
    if args.output is None:
        custom = args.time_scale != 1 or args.local
        if custom or args.runbook_base_url != outputs.DEFAULT_RUNBOOK_BASE_URL:
            raise ConfigError(
                "--time-scale, --local and --runbook-base-url apply to one rule file: add "
                "--output PATH (the committed files are always the real rules, cloud and local)."
            )
        written = outputs.write_outputs(outputs.committed_outputs(specs))
    else:
        written = [
            write_rules(
                args.output,
                specs,
                time_scale=args.time_scale,
                runbook_base_url=args.runbook_base_url,
                include_cloud=not args.local,
            )
        ]
    _echo(f"{len(specs)} SLOs from {args.specs}:")
    for path in written:
        _echo(f"  wrote {path}")
    return 0


def _configure_slo_status(parser: argparse.ArgumentParser) -> None:
    from mlre.slo.outputs import SPECS_DIR

    parser.add_argument("--specs", type=Path, default=SPECS_DIR, help="spec folder (default slos/)")
    parser.add_argument("--prometheus", help="Prometheus URL (default: MLRE_PROMETHEUS_URL/local)")


@slo_action(
    "status",
    help="every SLO now: objective, SLI, 30-day budget left, burn rates, firing alerts",
    configure=_configure_slo_status,
)
def _slo_status(args: argparse.Namespace, settings: Settings) -> int:
    from mlre.prometheus_api import firing_alerts, querier
    from mlre.slo.spec import load_specs
    from mlre.slo.status import read_status, table_rows

    url = args.prometheus or settings.prometheus_endpoint
    if not url:
        raise MlreError(
            "No Prometheus to read: monitoring is off (MLRE_MONITORING=false) and "
            "MLRE_PROMETHEUS_URL is not set; run `mlre up` or pass --prometheus URL."
        )
    statuses = read_status(querier(url), firing_alerts(url), load_specs(args.specs))
    rows = table_rows(statuses)
    header = tuple(rows[0]) if rows else ()
    lines = [header, *(tuple(row.values()) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    _echo(f"\n(from {url}; 'no data' means nothing was scraped or pushed for that SLO yet)")
    return 1 if any(s.verdict in ("burning", "exhausted") for s in statuses) else 0


def _utc_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _print_table(rows: Sequence[ServiceStatus]) -> None:
    """Print status rows as an aligned table."""
    header = ("SERVICE", "URL", "PID", "HEALTH", "LOG")
    lines = [header] + [(r.name, r.url, str(r.pid or "-"), r.health, str(r.log_path)) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per registered subcommand."""
    parser = argparse.ArgumentParser(prog="mlre", description="ML reliability platform.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, sub in SUBCOMMANDS.items():
        child = subparsers.add_parser(name, help=sub.help, description=sub.help)
        if sub.configure is not None:
            sub.configure(child)
        child.set_defaults(handler=sub.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `mlre`: parse, export the runtime environment, run, map errors."""
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        bad = ", ".join(f"MLRE_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors())
        print(f"mlre {args.command}: error: invalid setting ({bad}).", file=sys.stderr)
        return 2
    try:
        apply_runtime_env(settings)
        return int(args.handler(args, settings))
    except MlreError as exc:
        # A user-fixable problem: the message names the input and what to do; no traceback.
        print(f"mlre {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlre {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

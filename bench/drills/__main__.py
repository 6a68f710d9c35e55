"""Chaos drills (`make drill`): inject a real failure into a private local platform and follow the
self-healing loop end to end, with every SLO window divided by TIME_SCALE.

    python -m bench.drills [SCENARIO ...] [--keep] [--results PATH]
    (results: bench/results/drills.json and a table; exit 1 when a drill did not heal)

Scenarios (each module's docstring tells the story):
- stale-feature-view, corrupted-online-row: bench/drills/features.py
- degraded-champion: bench/drills/models.py
- worker-killed-mid-flow: bench/drills/pipelines.py
- diverging-canary, redis-killed-under-load: bench/drills/service.py
A drill passes when its alert fired, its remediation run completed with the designed outcome
(remediated, or escalated where no automatic action is safe), the SLI recovered and nothing
already stored was lost. The platform and the loop they share: bench/drills/platform.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.drills.features import corrupted_online_row, stale_feature_view
from bench.drills.models import degraded_champion
from bench.drills.pipelines import worker_killed_mid_flow
from bench.drills.platform import TIME_SCALE, DrillPlatform, DrillResult, drill_platform
from bench.drills.service import diverging_canary, redis_killed_under_load
from mlre.monitoring_config import DRILL
from mlre.settings import PROJECT_ROOT

RESULTS_PATH = PROJECT_ROOT / "bench" / "results" / "drills.json"

SCENARIOS: dict[str, Callable[[DrillPlatform], DrillResult]] = {
    "stale-feature-view": stale_feature_view,
    "corrupted-online-row": corrupted_online_row,
    # Before degraded-champion: the re-run promotes, which the error-budget policy refuses once
    # that drill has spent the model-quality budget (as it should).
    "worker-killed-mid-flow": worker_killed_mid_flow,
    "degraded-champion": degraded_champion,
    "diverging-canary": diverging_canary,
    "redis-killed-under-load": redis_killed_under_load,
}


def table(results: list[DrillResult]) -> str:
    header = (
        "| scenario | alert | after | remediation run | outcome (designed) | SLI recovered | lost |"
    )
    rows = [header, "|---|---|---|---|---|---|---|"]
    for r in results:
        after = f"{r.alert_after_s} s" if r.alert_after_s is not None else "never"
        back = f"yes, {r.recovered_after_s} s" if r.sli_recovered else "no"
        rows.append(
            f"| {r.scenario} | {r.alert if r.alert_fired else 'did not fire'} | {after} | "
            f"{r.remediation or '-'}: {r.run_state or '-'} | {r.outcome or '-'} ({r.expected}) | "
            f"{back} | "
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
            try:
                results.append(SCENARIOS[name](drill))
            except Exception as exc:  # a drill that cannot set up its failure fails, the rest run
                echo(f"  {name} could not run: {exc!r}")
                results.append(DrillResult(name, "(not injected)", "", notes=[repr(exc)[:2000]]))
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

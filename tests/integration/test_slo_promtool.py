"""The generated SLO rules under Debian's promtool: `check rules` on every profile, and `test
rules` suites generated from the specs for every alert (each burn tier fires just above its
rate, stays quiet just below, resolves; the absent alert fires with no series), at the real
time scale and, for the serving SLOs, at the drill's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlre.settings import PROJECT_ROOT
from mlre.slo.outputs import (
    DEFAULT_RUNBOOK_BASE_URL,
    DRILL_TIME_SCALE,
    LOCAL_RULES_FILE,
    RULES_FILE,
    SPECS_DIR,
)
from mlre.slo.rule_tests import PromtoolSuite, enabled, promtool_suite
from mlre.slo.rules import dump_yaml, generate_rules, render_rules, tiers
from mlre.slo.spec import SloSpec, load_specs

pytestmark = pytest.mark.integration

SPECS = load_specs(SPECS_DIR)
DRILLED = [spec for spec in SPECS if spec.service == "serving"]  # what the live drill pages on
DRILL_FILES = (".values.", ".page.", ".absent.")  # the drill-scaled suites run these
PROMTOOL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Run:
    """One promtool invocation and its outcome."""

    args: tuple[str, ...]
    returncode: int
    output: str


def _promtool() -> str:
    """promtool's path; missing is a failure with the fix, never a skip."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: `make test` installs Debian's prometheus package (which "
            "ships promtool) when it runs as root; elsewhere install it with "
            "`sudo apt-get install --no-install-recommends prometheus`."
        )
    return path


def _run(promtool: str, args: list[str], cwd: Path) -> Run:
    done = subprocess.run(
        [promtool, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    return Run(tuple(args), done.returncode, (done.stdout + done.stderr)[-6000:])


def _write(suite: PromtoolSuite, folder: Path, only: tuple[str, ...] = ()) -> list[str]:
    """Write a suite's rule and test files; the test files to run (those matching `only`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in {**suite.rule_files, **suite.test_files}.items():
        (folder / name).write_text(dump_yaml(data))
    return [name for name in suite.test_files if not only or any(o in name for o in only)]


@pytest.fixture(scope="module")
def promtool() -> str:
    return _promtool()


@dataclass(frozen=True)
class Outcome:
    """The generated suites and promtool's verdict on each of their test files."""

    suites: dict[tuple[str, float], PromtoolSuite]
    runs: dict[tuple[str, float], list[Run]]


@pytest.fixture(scope="module")
def outcome(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """Every suite (each SLO at time scale 1, the drilled ones at the drill's too), run by
    `promtool test rules` one process per test file, started as soon as its suite is written."""
    root = tmp_path_factory.mktemp("promtool")
    keys = [(spec, 1.0) for spec in SPECS] + [(s, float(DRILL_TIME_SCALE)) for s in DRILLED]
    suites: dict[tuple[str, float], PromtoolSuite] = {}
    futures: list[tuple[tuple[str, float], Future[Run]]] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for spec, scale in keys:
            key = (spec.id, scale)
            suites[key] = promtool_suite(
                spec, runbook_base_url=DEFAULT_RUNBOOK_BASE_URL, time_scale=scale
            )
            folder = root / f"{spec.id}-x{scale:g}"
            only = DRILL_FILES if scale != 1 else ()
            for name in _write(suites[key], folder, only):
                futures.append((key, pool.submit(_run, promtool, ["test", "rules", name], folder)))
    runs: dict[tuple[str, float], list[Run]] = {}
    for key, future in futures:
        runs.setdefault(key, []).append(future.result())
    return Outcome(suites, runs)


def _rule_count(data: dict[str, Any]) -> int:
    return sum(len(group["rules"]) for group in data["groups"])


@pytest.mark.parametrize(
    ("profile", "time_scale", "include_cloud"),
    [("cloud", 1.0, True), ("local", 1.0, False), ("drill", float(DRILL_TIME_SCALE), False)],
)
def test_promtool_checks_every_rule_file(
    promtool: str, tmp_path: Path, profile: str, time_scale: float, include_cloud: bool
) -> None:
    committed = {"cloud": RULES_FILE, "local": LOCAL_RULES_FILE}.get(profile)
    path = PROJECT_ROOT / committed if committed else tmp_path / "slo-rules.drill.yaml"
    if committed is None:
        path.write_text(
            render_rules(
                SPECS,
                time_scale=time_scale,
                runbook_base_url=DEFAULT_RUNBOOK_BASE_URL,
                include_cloud=include_cloud,
            )
        )
    run = _run(promtool, ["check", "rules", str(path)], tmp_path)
    assert run.returncode == 0, run.output
    expected = _rule_count(
        generate_rules(
            SPECS,
            time_scale=time_scale,
            runbook_base_url=DEFAULT_RUNBOOK_BASE_URL,
            include_cloud=include_cloud,
        )
    )
    assert f"SUCCESS: {expected} rules found" in run.output


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_promtool_rule_tests_pass(spec: SloSpec, outcome: Outcome) -> None:
    runs = outcome.runs[(spec.id, 1.0)]
    failed = [run for run in runs if run.returncode != 0 or "SUCCESS" not in run.output]
    assert runs
    assert not failed, "\n\n".join(f"{r.args}:\n{r.output}" for r in failed)


@pytest.mark.parametrize("spec", DRILLED, ids=lambda s: s.id)
def test_promtool_rule_tests_pass_at_the_drill_scale(spec: SloSpec, outcome: Outcome) -> None:
    runs = outcome.runs[(spec.id, float(DRILL_TIME_SCALE))]
    failed = [run for run in runs if run.returncode != 0 or "SUCCESS" not in run.output]
    assert len(runs) == len(DRILL_FILES)
    assert not failed, "\n\n".join(f"{r.args}:\n{r.output}" for r in failed)


def _alert_tests(suite: PromtoolSuite) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, alert test) of every alert assertion in a suite."""
    for data in suite.test_files.values():
        for group in data["tests"]:
            for test in group.get("alert_rule_test", []):
                yield group["name"], test


def test_every_alert_and_tier_is_tested(outcome: Outcome) -> None:
    rules = generate_rules(SPECS, runbook_base_url=DEFAULT_RUNBOOK_BASE_URL)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested: set[str] = set()
    for spec in SPECS:
        suite = outcome.suites[(spec.id, 1.0)]
        groups = {name for name, _ in _alert_tests(suite)}
        for name, test in _alert_tests(suite):
            tested.add(test["alertname"])
            assert name
            assert test["eval_time"]
        for severity in enabled(spec):
            for tier in tiers(severity):
                label = f"{spec.slo.alerting.name} {severity} {tier.factor:g}x"
                fires = [g for g in groups if g.startswith(label) and "fires at" in g]
                quiet = [g for g in groups if g.startswith(label) and "stays quiet at" in g]
                assert fires, f"{label}: needs a scenario where it fires"
                assert quiet, f"{label}: needs a scenario where it stays quiet"
                # Firing just above the rate, quiet just below (the closest levels that show it).
                assert 1 < float(re.search(r"fires at ([\d.]+)x", fires[0]).group(1)) <= 1.25  # type: ignore[union-attr]
                assert 0.75 <= float(re.search(r"quiet at ([\d.]+)x", quiet[0]).group(1)) < 1  # type: ignore[union-attr]
        fired = [t for _, t in _alert_tests(suite) if t["exp_alerts"]]
        assert fired, f"{spec.id}: no test expects an alert"
    assert tested == alerts

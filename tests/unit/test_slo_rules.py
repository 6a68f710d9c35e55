"""The rule generator: Sloth's names and labels, the workbook's burn tiers, the drill scale; the
committed files match the specs; every alert has a runbook whose commands exist."""

from __future__ import annotations

import argparse
import ast
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser, main
from mlre.errors import ConfigError
from mlre.settings import PROJECT_ROOT
from mlre.slo.dashboards import generate_dashboards
from mlre.slo.outputs import (
    DASHBOARDS_DIR,
    DEFAULT_RUNBOOK_BASE_URL,
    REGENERATE,
    RUNBOOKS_DIR,
    SPECS_DIR,
    committed_outputs,
)
from mlre.slo.rule_tests import Process, Scenario, firing, promtool_suite, tier_scenario, timing
from mlre.slo.rules import BURN_TIERS, SLI_WINDOWS, generate_rules, render_rules
from mlre.slo.spec import SloSpec, load_specs
from tests.unit.test_cli_messages import _subparsers

pytestmark = pytest.mark.unit

SPECS = load_specs(SPECS_DIR)
BASE = "https://runbooks.example/mlre"
META = (
    "slo:objective:ratio",
    "slo:error_budget:ratio",
    "slo:time_period:days",
    "slo:current_burn_rate:ratio",
    "slo:period_burn_rate:ratio",
    "slo:period_error_budget_remaining:ratio",
)


def _rules(time_scale: float = 1.0, **kwargs: Any) -> list[dict[str, Any]]:
    data = generate_rules(SPECS, time_scale=time_scale, runbook_base_url=BASE, **kwargs)
    return [rule for group in data["groups"] for rule in group["rules"]]


def _of(spec: SloSpec, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in rules
        if r.get("labels", {}).get("sloth_id") == spec.id or r.get("alert") in spec.alert_names
    ]


def _alerts(rules: list[dict[str, Any]]) -> set[str]:
    return {r["alert"] for r in rules if "alert" in r}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_every_slo_records_sloths_series_with_sloths_labels(spec: SloSpec) -> None:
    rules = _of(spec, _rules())
    records = {r["record"]: r for r in rules if "record" in r}
    windows = [*SLI_WINDOWS, "30d"]
    assert {f"slo:sli_error:ratio_rate{w}" for w in windows} | set(META) <= set(records)
    for window in windows:
        labels = records[f"slo:sli_error:ratio_rate{window}"]["labels"]
        assert labels["sloth_window"] == window
        assert (labels["sloth_id"], labels["sloth_service"], labels["sloth_slo"]) == (
            spec.id,
            spec.service,
            spec.name,
        )
        assert spec.labels.items() <= labels.items()
    objective = records["slo:objective:ratio"]["expr"]
    assert objective == f"vector({spec.slo.objective / 100:g})"
    assert records["slo:time_period:days"]["expr"] == "vector(30)"


def test_a_ratio_sli_reads_zero_without_errors_and_nothing_without_traffic() -> None:
    spec = next(s for s in SPECS if s.id == "serving-availability")
    expr = next(r for r in _of(spec, _rules()) if r.get("record") == "slo:sli_error:ratio_rate1h")
    text = expr["expr"]
    assert 'route="fallback"}[1h]' in text
    assert "or\n  (0 * (" in text  # no fallback series yet: 0, not an empty result
    assert "> 0)" in text  # no traffic: no sample, not NaN in the 30-day mean


def test_a_time_slice_sli_averages_slices_then_recorded_shares() -> None:
    spec = next(s for s in SPECS if s.id == "features-freshness")
    records = {r["record"]: r["expr"] for r in _of(spec, _rules()) if "record" in r}
    assert "> bool 93600" in records["slo:sli_error:ratio_rate5m"]
    assert records["slo:sli_error:ratio_rate5m"].rstrip().endswith(")[5m:1m]\n)")
    assert records["slo:sli_error:ratio_rate6h"] == (
        'avg_over_time(slo:sli_error:ratio_rate5m{sloth_id="features-freshness", '
        'sloth_service="features", sloth_slo="freshness"}[6h])'
    )
    assert "slo:sli_error:ratio_rate1h{" in records["slo:sli_error:ratio_rate3d"]
    assert records["slo:sli_error:ratio_rate3d"].endswith("[3d:1h])")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_burn_alerts_follow_the_workbook_tiers(spec: SloSpec) -> None:
    rules = [r for r in _of(spec, _rules()) if r.get("alert") == spec.slo.alerting.name]
    by_severity = {r["labels"]["severity"]: r for r in rules}
    alerting = spec.slo.alerting
    expected = {s for s, m in (("page", alerting.page_alert), ("ticket", alerting.ticket_alert))}
    expected -= {
        s
        for s, m in (("page", alerting.page_alert), ("ticket", alerting.ticket_alert))
        if m.disable
    }
    assert set(by_severity) == expected
    budget = f"{spec.error_budget:g}"
    for severity, rule in by_severity.items():
        assert rule["labels"]["sloth_severity"] == severity
        assert "for" not in rule  # multi-window burn rates need no pending time
        expr = rule["expr"]
        for tier in BURN_TIERS:
            # Both windows of the tier are compared to factor x budget, in this alert only.
            for window in (tier.short_window, tier.long_window):
                term = f'slo:sli_error:ratio_rate{window}{{sloth_id="{spec.id}"'
                compared = f"> ({tier.factor:g} * {budget})"
                pairs = re.findall(rf"ratio_rate{window}\{{[^}}]*\}} (> \([^)]*\))", expr)
                assert ((term in expr) and (compared in pairs)) == (tier.severity == severity)
        annotations = rule["annotations"]
        assert annotations["runbook_url"] == f"{BASE}/{alerting.name}.md"
        assert annotations["summary"]
        assert annotations["description"]


def test_the_tiers_burn_the_workbooks_budget_shares() -> None:
    assert [(t.severity, t.factor, t.long_window, t.short_window) for t in BURN_TIERS] == [
        ("page", 14.4, "1h", "5m"),
        ("page", 6.0, "6h", "30m"),
        ("ticket", 3.0, "1d", "2h"),
        ("ticket", 1.0, "3d", "6h"),
    ]
    assert [round(t.budget_share, 4) for t in BURN_TIERS] == [0.02, 0.05, 0.1, 0.1]


def test_absent_alerts_wait_and_name_their_runbook() -> None:
    rules = {r["alert"]: r for r in _rules() if r.get("alert", "").endswith("SLIAbsent")}
    page = rules["ServingAvailabilitySLIAbsent"]
    assert page["expr"] == 'absent(mlre_serving_predictions_total{job="mlre-serving"})'
    assert page["for"] == "10m"
    assert page["labels"]["severity"] == "page"
    assert page["labels"]["sloth_id"] == "serving-availability"
    assert page["annotations"]["runbook_url"] == f"{BASE}/ServingAvailabilitySLIAbsent.md"
    assert rules["FeatureFreshnessSLIAbsent"]["labels"]["severity"] == "ticket"
    assert "GpuIdleSLIAbsent" not in _alerts(_rules())  # disabled with a reason


@pytest.mark.parametrize(
    ("scale", "five_minutes", "thirty_days", "slice_step", "absent_for"),
    [(60, "5s", "12h", "1s", "10s"), (120, "2s500ms", "6h", "500ms", "5s")],
)
def test_time_scale_divides_every_window_step_and_for(
    scale: int, five_minutes: str, thirty_days: str, slice_step: str, absent_for: str
) -> None:
    scaled = _rules(time_scale=scale)
    normal = _rules()
    assert [r.get("record") or r.get("alert") for r in scaled] == [
        r.get("record") or r.get("alert") for r in normal
    ]  # same rules, same names
    assert [r.get("labels") for r in scaled] == [r.get("labels") for r in normal]  # nominal windows
    availability = {
        r.get("record"): r["expr"]
        for r in scaled
        if r.get("labels", {}).get("sloth_id") == "serving-availability"
    }
    assert f"[{five_minutes}]" in availability["slo:sli_error:ratio_rate5m"]
    assert f"[{thirty_days}]" in availability["slo:sli_error:ratio_rate30d"]
    freshness = next(
        r["expr"]
        for r in scaled
        if r.get("record") == "slo:sli_error:ratio_rate5m"
        and r["labels"]["sloth_id"] == "features-freshness"
    )
    assert f"[{five_minutes}:{slice_step}]" in freshness
    absent = next(r for r in scaled if r.get("alert") == "ServingAvailabilitySLIAbsent")
    assert absent["for"] == absent_for
    assert f"divided by {scale}" in absent["annotations"]["description"]


@pytest.mark.parametrize("scale", [0, -1, float("inf"), 10**9])
def test_a_nonsense_time_scale_is_refused(scale: float) -> None:
    with pytest.raises(ConfigError, match="time_scale"):
        generate_rules(SPECS, time_scale=scale, runbook_base_url=BASE)


def test_the_local_profile_leaves_out_cloud_only_slos() -> None:
    everything, local = _alerts(_rules()), _alerts(_rules(include_cloud=False))
    assert everything - local == {"GpuIdleBudgetBurn"}
    assert not any("gpu-pools" in str(r.get("labels")) for r in _rules(include_cloud=False))


def test_the_rendered_file_says_it_is_generated() -> None:
    text = render_rules(SPECS, runbook_base_url=BASE)
    assert text.startswith("# Generated by `mlre slo generate`")
    assert yaml.safe_load(text) == generate_rules(SPECS, runbook_base_url=BASE)


def test_committed_files_match_the_specs() -> None:
    outputs = committed_outputs(SPECS)
    stale = [
        str(path)
        for path, text in outputs.items()
        if not (PROJECT_ROOT / path).is_file() or (PROJECT_ROOT / path).read_text() != text
    ]
    extra = sorted(
        str(p.relative_to(PROJECT_ROOT))
        for p in (PROJECT_ROOT / DASHBOARDS_DIR).glob("mlre-slo-*.json")
        if p.relative_to(PROJECT_ROOT) not in outputs
    )
    drifted = stale + extra
    assert not drifted, (
        f"generated files differ from slos/*.yaml: {drifted}; run `{REGENERATE}` and commit "
        "the result"
    )


def test_one_dashboard_per_service_reading_only_generated_series() -> None:
    dashboards = generate_dashboards(SPECS)
    assert set(dashboards) == {f"mlre-slo-{s.service}.json" for s in SPECS}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(uids) == len(set(uids))
    for name, dashboard in dashboards.items():
        service = name.removeprefix("mlre-slo-").removesuffix(".json")
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert exprs
        for expr in exprs:
            metrics = set(re.findall(r"\b(slo:[a-z_:0-9]+)", expr))
            assert metrics, expr  # only the recording rules, never raw series
            assert 'sloth_id="' in expr
        ids = {s.id for s in SPECS if s.service == service}
        assert {re.search(r'sloth_id="([^"]+)"', e).group(1) for e in exprs} == ids  # type: ignore[union-attr]


# -- runbooks ----------------------------------------------------------------------------------

ALERTS = sorted(_alerts(_rules()))
RUNBOOKS = sorted(p for p in RUNBOOKS_DIR.glob("*.md") if p.name != "README.md")
SECTIONS = (
    "## What it means",
    "## Confirm",
    "## Mitigate",
    "## Escalate",
    "## Automated remediation",
)
# A command as the runbooks write one: a code span or a line of a code block, `mlre WORD ...`.
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    names = {p.stem for p in RUNBOOKS}
    assert not set(ALERTS) - names, f"alerts without runbooks/<alert>.md: {set(ALERTS) - names}"
    assert not names - set(ALERTS), f"runbooks without an alert: {names - set(ALERTS)}"
    assert ALERTS  # the check above checks something


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=lambda p: p.stem)
def test_a_runbook_has_every_part(runbook: Path) -> None:
    text = runbook.read_text()
    assert text.startswith(f"# {runbook.stem}\n")
    missing = [s for s in SECTIONS if s not in text]
    assert not missing, f"{runbook.name} lacks {missing}"
    assert "```promql" in text, f"{runbook.name}: confirm with a PromQL query"
    remediation = " ".join(text.split("## Automated remediation", 1)[1].split())
    # Either the automation that runs (remediate/ACTION) or why none does.
    assert "remediate/" in remediation or "on purpose" in remediation, runbook.name


def _commands(text: str) -> list[list[str]]:
    """Every `mlre ...` command in the code blocks and code spans of a markdown text."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    lines += [" ".join(span.split()) for span in SPAN.findall(FENCE.sub("", text))]
    return [words[1:] for words in map(str.split, lines) if len(words) >= 2 and words[0] == "mlre"]


def _deployments() -> set[str]:
    """`flow/deployment` names of prefect.yaml: flow names from the entrypoints' @flow(name=)."""
    names = set()
    for item in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]:
        file, function = item["entrypoint"].split(":")
        tree = ast.parse((PROJECT_ROOT / file).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == function:
                for decorator in node.decorator_list:
                    for kw in getattr(decorator, "keywords", []):
                        if kw.arg == "name":
                            names.add(f"{kw.value.value}/{item['name']}")
    return names


def _check(words: list[str], parser: argparse.ArgumentParser, where: str) -> None:
    commands = _subparsers(parser)
    command, *rest = words
    assert command in commands, f"{where}: `mlre {command}` is not a command of the CLI"
    child = commands[command]
    if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
        assert rest, f"{where}: `mlre {command}` needs an action"
        _check(rest, child, f"{where} (mlre {command})")
        return
    options = {o for action in child._actions for o in action.option_strings}
    unknown = [
        w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in options
    ]
    assert not unknown, f"{where}: `mlre {command}` has no option(s) {unknown}"
    if command == "run":
        target = next(w for w in rest if not w.startswith("-"))
        if target != "FLOW/DEPLOYMENT":  # the placeholder of a generic instruction
            assert target in _deployments(), f"{where}: no deployment {target} in prefect.yaml"


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=lambda p: p.stem)
def test_a_runbook_names_only_commands_that_exist(runbook: Path) -> None:
    commands = _commands(runbook.read_text())
    parser = build_parser()
    for words in commands:
        _check(words, parser, runbook.name)


def test_the_command_check_sees_the_commands() -> None:
    everything = [w for p in RUNBOOKS for w in _commands(p.read_text())]
    assert {"run", "rollback", "check-consistency", "materialize", "status"} <= {
        w[0] for w in everything
    }
    assert _commands("```bash\nmlre up\n```\nthen `mlre run\n  a/b --no-wait`") == [
        ["up"],
        ["run", "a/b", "--no-wait"],
    ]
    assert "materialize-features/hourly" in _deployments()
    with pytest.raises(AssertionError, match="no deployment"):
        _check(["run", "materialize-features/daily"], build_parser(), "x")
    with pytest.raises(AssertionError, match="has no option"):
        _check(["rollback", "--why", "x"], build_parser(), "x")
    with pytest.raises(AssertionError, match="not a command"):
        _check(["slo", "explode"], build_parser(), "x")


# -- the command -------------------------------------------------------------------------------


def test_mlre_slo_generate_writes_a_drill_rule_file(tmp_path: Path) -> None:
    target = tmp_path / "drill" / "rules.yaml"
    code = main(["slo", "generate", "--output", str(target), "--time-scale", "60", "--local"])
    assert code == 0
    assert yaml.safe_load(target.read_text()) == generate_rules(
        SPECS, time_scale=60, runbook_base_url=DEFAULT_RUNBOOK_BASE_URL, include_cloud=False
    )


def test_mlre_slo_generate_refuses_a_scaled_committed_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["slo", "generate", "--time-scale", "60"]) == 2
    assert "add --output PATH" in capsys.readouterr().err


def test_mlre_slo_takes_actions() -> None:
    parser = build_parser()
    slo = _subparsers(parser)["slo"]
    assert "generate" in _subparsers(slo)
    with pytest.raises(SystemExit):
        parser.parse_args(["slo"])  # an action is required


# -- the promtool suites' arithmetic (promtool runs them in tests/integration) -----------------


def test_a_suite_covers_every_alert_of_its_slo() -> None:
    spec = next(s for s in SPECS if s.id == "serving-availability")
    suite = promtool_suite(spec, runbook_base_url=BASE)
    assert set(suite.test_files) == {
        f"serving-availability.{kind}.test.yaml" for kind in ("values", "page", "ticket", "absent")
    }
    names = [g["name"] for f in suite.test_files.values() for g in f["tests"]]
    for tier in BURN_TIERS:
        label = f"ServingAvailabilityBudgetBurn {tier.severity} {tier.factor:g}x"
        assert f"{label} ({tier.long_window} and {tier.short_window}): fires at 1.10x" in " ".join(
            names
        )
        assert any(n.startswith(label) and "stays quiet at 0.90x" in n for n in names)
    alerts = {
        t["alertname"]
        for f in suite.test_files.values()
        for g in f["tests"]
        for t in g.get("alert_rule_test", [])
    }
    assert alerts == set(spec.alert_names)


def test_the_simulated_burn_crosses_the_threshold_when_the_window_fills() -> None:
    spec = next(s for s in SPECS if s.id == "serving-availability")
    tier = BURN_TIERS[0]  # page, 14.4x over 1h and 5m
    when = timing(spec, "page")
    scenario = tier_scenario(spec, tier, when, 1.1)
    process = Process(spec, scenario, 2000, when)
    start = scenario.phases[1][0] - 1  # the last clean step
    hour = 60  # steps of one minute
    assert firing(spec, process, start, ["page"]) == {"page": False}
    assert firing(spec, process, start + 50, ["page"]) == {"page": False}  # 50/60 of 1.1x
    assert firing(spec, process, start + hour + 5, ["page"]) == {"page": True}
    assert process.sli(3_600_000, start + hour + 5, include_left=False) == pytest.approx(
        1.1 * 14.4 * 0.005
    )


@pytest.mark.parametrize("level", [0.0, 0.013, 0.25, 0.9, 1.0])
def test_time_slice_patterns_spread_bad_slices_evenly(level: float) -> None:
    spec = next(s for s in SPECS if s.id == "features-freshness")
    when = timing(spec, "page")
    process = Process(spec, Scenario("x", ((0, level),)), 3000, when)
    for width in (5, 60, 1440):
        counts = {sum(process.bad[i : i + width]) for i in range(0, 3000 - width, 7)}
        assert counts <= {math.floor(level * width), math.ceil(level * width)}


def test_every_remediation_an_alert_names_is_deployed_and_documented() -> None:
    named = {
        spec.slo.alerting.name: spec.slo.alerting.annotations["remediation"]
        for spec in SPECS
        if "remediation" in spec.slo.alerting.annotations
    }
    # The self-healing loop covers serving, model quality, drift, freshness and consistency.
    assert set(named.values()) == {
        "rollback-canary", "rollback-model", "retrain", "backfill-features", "repair-consistency"
    }  # fmt: skip
    deployments = _deployments()
    for alert, action in named.items():
        assert f"remediate/{action}" in deployments, f"{alert}: remediate/{action} not deployed"
        runbook = (PROJECT_ROOT / "runbooks" / f"{alert}.md").read_text()
        assert f"remediate/{action}" in runbook, f"runbooks/{alert}.md does not name {action}"
    rules = yaml.safe_load((PROJECT_ROOT / "deploy/prometheus/slo-rules.yaml").read_text())
    annotated = {
        rule["alert"]: rule["annotations"].get("remediation")
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert {alert: annotated[alert] for alert in named} == named  # the generated rules carry it

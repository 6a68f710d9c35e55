"""promtool unit tests generated from the SLO specs: every alert, every burn-rate tier.

Per SLO, driven by the spec's own `testSeries` (a ratio SLI gets an exact error ratio from its
counters; a time-slice SLI gets that share of bad slices, or of 15m blocks for the ticket
tiers' days-long windows, spread evenly):
- values: an hour of all-bad, all-good (and, for a ratio, never-created error) traffic reads
  1, 0 (and 0) in every `slo:sli_error:*` window, and the metadata rules (objective, budget,
  burn rates, budget left) hold their exact values;
- page / ticket: for each tier (14.4x, 6x; 3x, 1x), after a clean background, errors just above
  the tier's burn rate (1.1x, see FIRE) keep the alert quiet while the long window holds 85% of
  the threshold, fire it once the window is full and let it resolve after recovery; errors just
  below (0.9x) keep it quiet once the window is full;
- absent: the absent alert fires with no series after its `for`, and not while they exist.

The expected alerts at each check come from simulating the recording rules over the synthetic
series under both conventions of a range's left edge (Prometheus 2 includes it, 3 excludes it);
a check sits only where both agree and no ratio is on a threshold, so promtool can compare every
label and annotation of every firing alert exactly. Pure: returns dicts to write as YAML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mlre.slo.durations import format_ms, parse_ms
from mlre.slo.rules import (
    CURRENT_WINDOW,
    HOURLY_WINDOW,
    PERIOD,
    PERIOD_DAYS,
    SLI_WINDOWS,
    BurnTier,
    Severity,
    group_names,
    id_labels,
    sli_error_metric,
    slice_source,
    slo_groups,
    tiers,
)
from mlre.slo.spec import SloSpec, parse_selector, series_labels

MINUTE_MS = 60_000
EVENTS_PER_STEP = 100_000  # integral bad counts for every ratio the scenarios use
COUNTER_START = 10**12  # far from zero: rate() extrapolates good and bad counters alike
# Error levels relative to the tier's burn threshold: fire just above it, stay quiet just below.
# A ratio SLI reads the level exactly. A time slice's 5m share counts six points in Prometheus
# 2's closed ranges when evaluations align with the slices (promtool's do), so a sparse pattern
# reads between 5/6 and 5/3 of its share on that version: where the closest level cannot show
# the claim under both range conventions, the next one out is tried (LEVEL_STEP, up to LEVELS).
FIRE, QUIET, LEVEL_STEP, LEVELS = 1.1, 0.9, 0.05, 8
# Clean history before the errors, as shares of the severity's longest window: the first that
# lets a scenario show its claim (other tiers quiet, the window's length visible) is used.
BACKGROUNDS = (0.125, 0.25, 0.5, 0.6, 0.75, 1.0)
_TEMPLATE = re.compile(r"\{\{\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


class ScenarioError(AssertionError):
    """A scenario cannot show its claim at any unambiguous evaluation near its check."""


@dataclass(frozen=True)
class Timing:
    """Input series interval and rule evaluation interval of one test file (ms), and how many
    steps a time-slice pattern holds each state (1: every slice on its own)."""

    step_ms: int
    eval_ms: int
    block: int = 1

    @property
    def every(self) -> int:
        """Series steps between two evaluations."""
        return self.eval_ms // self.step_ms


@dataclass(frozen=True)
class Check:
    """One assertion: at `step`, alerts of `severity` fire (True) or not (False)."""

    step: int
    severity: Severity
    fires: bool


@dataclass(frozen=True)
class Scenario:
    """Error levels from given steps on, and the checks made on them."""

    name: str
    phases: tuple[tuple[int, float], ...]  # (first step, error level), increasing steps
    checks: tuple[Check, ...] = ()
    recover_after: int = 0  # > 0: errors stop after the firing check; then this many steps

    def level(self, step: int) -> tuple[float, int]:
        """Error level at `step` and the step its phase began."""
        current = (0.0, 0)
        for first, level in self.phases:
            if first <= step:
                current = (level, first)
        return current


@dataclass(frozen=True)
class PromtoolSuite:
    """Rule files and promtool test files for one SLO (test files name rule files relatively)."""

    rule_files: dict[str, dict[str, Any]]
    test_files: dict[str, dict[str, Any]]
    alerts: tuple[str, ...] = field(default=())


def timing(spec: SloSpec, severity: Severity) -> Timing:
    """Intervals for one severity's tests: as coarse as the windows allow (promtool is slow)."""
    threshold = spec.slo.indicator.threshold_metric
    if threshold is not None:
        step = parse_ms(threshold.time_slice_window)
        if severity == "page":
            # The 5m shares tile the timeline when rules run every 5m: every slice counts.
            return Timing(step, 5 * MINUTE_MS)
        # Days of ticket windows: rules every 15m, the pattern in 15m blocks, so each 5m share
        # (inside one block) reads its block's state exactly, and promtool runs half as long.
        return Timing(step, 15 * MINUTE_MS, block=15 * MINUTE_MS // step)
    if severity == "page":
        return Timing(MINUTE_MS, 5 * MINUTE_MS)  # 5 samples in the 5m window
    return Timing(30 * MINUTE_MS, 60 * MINUTE_MS)  # ticket windows are 2h and longer


class Process:
    """Per-step bad weights of a scenario (events, or bad time slices) and the SLI it records."""

    def __init__(self, spec: SloSpec, scenario: Scenario, steps: int, when: Timing) -> None:
        self.ratio = spec.slo.indicator.ratio_metric is not None
        self.when = when
        self.total = EVENTS_PER_STEP if self.ratio else 1
        self.bad = [self._bad(*scenario.level(step), step) for step in range(steps + 1)]
        self._cum = [0.0]
        for bad in self.bad:
            self._cum.append(self._cum[-1] + bad)
        self._records: dict[bool, list[float]] = {}  # prefix sums of the 5m shares per eval

    def _bad(self, level: float, first: int, step: int) -> float:
        if self.ratio:
            return round(level * EVENTS_PER_STEP)
        # Evenly spread bad slices, or blocks of them (a Beatty sequence): any w consecutive
        # ones of the phase hold floor(level*w) or ceil(level*w) bad ones. Blocks end on
        # evaluations (phases start one step after one).
        offset = (step - first) // self.when.block
        return float(math.floor((offset + 1) * level) - math.floor(offset * level))

    def sli(self, window_ms: int, step: int, include_left: bool) -> float | None:
        """The recorded SLI error ratio over `window_ms` at eval `step` (None: no sample)."""
        width = window_ms // self.when.step_ms
        oldest = step - width + (0 if include_left else 1)  # first sample inside the range
        if self.ratio:
            first = max(0, oldest)
            if step - first < 1:
                return None  # rate() needs two samples
            return self._mean(first + 1, step)  # the increments between the samples
        source = slice_source(format_ms(window_ms))
        if source is None:
            return self._mean(max(0, oldest), step)  # subquery points, one per slice
        if source == CURRENT_WINDOW:
            return self._record_mean(max(0, oldest), step, include_left)
        # Hourly snapshots: the 1h share at each full hour inside the range.
        hour_ms = parse_ms(HOURLY_WINDOW)
        hour = hour_ms // self.when.step_ms
        shares = [
            share
            for point in range(step // hour * hour, max(oldest, 0) - 1, -hour)
            if (share := self.sli(hour_ms, point, include_left)) is not None
        ]
        return sum(shares) / len(shares) if shares else None

    def _mean(self, first: int, last: int) -> float | None:
        """Mean bad weight of steps first..last, per event or slice."""
        count = last - first + 1
        return (
            (self._cum[last + 1] - self._cum[first]) / (self.total * count) if count > 0 else None
        )

    def _record_mean(self, first: int, last: int, include_left: bool) -> float | None:
        """Mean of the 5m shares recorded at the evaluations within steps first..last."""
        every = self.when.every
        if include_left not in self._records:
            width = parse_ms(CURRENT_WINDOW) // self.when.step_ms
            sums = [0.0]
            for at in range(0, len(self.bad), every):
                low = max(0, at - width + (0 if include_left else 1))
                sums.append(sums[-1] + (self._mean(low, at) or 0.0))
            self._records[include_left] = sums
        sums = self._records[include_left]
        low, high = -(-first // every), last // every  # eval indices inside the range
        return (sums[high + 1] - sums[low]) / (high - low + 1) if high >= low else None


def firing(
    spec: SloSpec, process: Process, step: int, severities: Sequence[Severity]
) -> dict[Severity, bool] | None:
    """Which of `severities` fire at `step`, or None where the two range conventions disagree
    or a ratio sits on a threshold (no check belongs there)."""
    answers = []
    for include_left in (True, False):
        state: dict[Severity, bool] = {}
        for severity in severities:
            fired = False
            for tier in tiers(severity):
                threshold = tier.factor * spec.error_budget
                ok = True
                for window in (tier.short_window, tier.long_window):
                    ratio = process.sli(parse_ms(window), step, include_left)
                    if ratio is not None and math.isclose(ratio, threshold, rel_tol=1e-6):
                        return None
                    ok = ok and ratio is not None and ratio > threshold
                fired = fired or ok
            state[severity] = fired
        answers.append(state)
    return answers[0] if answers[0] == answers[1] else None


# -- the suite ---------------------------------------------------------------------------------


def promtool_suite(
    spec: SloSpec, *, runbook_base_url: str, time_scale: float = 1.0
) -> PromtoolSuite:
    """Every rule and test file promtool needs to test one SLO's rules."""
    groups = slo_groups(spec, time_scale=time_scale, runbook_base_url=runbook_base_url)
    rules = {
        (rule["alert"], rule["labels"]["severity"]): rule
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    }
    full = f"{spec.id}.rules.yaml"
    sli_name, meta_name, alert_name = group_names(spec)
    rule_files: dict[str, dict[str, Any]] = {full: {"groups": groups}}
    tests: dict[str, dict[str, Any]] = {
        f"{spec.id}.values.test.yaml": _file(
            full,
            MINUTE_MS,
            [sli_name, meta_name, alert_name],
            _value_groups(spec, time_scale),
            time_scale,
        )
    }
    for severity in enabled(spec):
        when = timing(spec, severity)
        rule_files[f"{spec.id}.{severity}.rules.yaml"] = _severity_rules(spec, groups, severity)
        tests[f"{spec.id}.{severity}.test.yaml"] = _file(
            f"{spec.id}.{severity}.rules.yaml",
            when.eval_ms,
            [sli_name, alert_name],
            [
                group
                for tier in tiers(severity)
                for group in (
                    _first_group(
                        spec, tier, fires=True, rules=rules, when=when, time_scale=time_scale
                    ),
                    _first_group(
                        spec, tier, fires=False, rules=rules, when=when, time_scale=time_scale
                    ),
                )
            ],
            time_scale,
        )
    absent = _absent_groups(spec, rules, time_scale)
    if absent:
        name = spec.slo.alerting.absent.name
        rule_files[f"{spec.id}.absent.rules.yaml"] = {
            "groups": [
                {
                    "name": alert_name,
                    "rules": [r for r in groups[2]["rules"] if r.get("alert") == name],
                }
            ]
        }
        tests[f"{spec.id}.absent.test.yaml"] = _file(
            f"{spec.id}.absent.rules.yaml", MINUTE_MS, [alert_name], absent, time_scale
        )
    return PromtoolSuite(rule_files=rule_files, test_files=tests, alerts=tuple(spec.alert_names))


def _severity_rules(
    spec: SloSpec, groups: list[dict[str, Any]], severity: Severity
) -> dict[str, Any]:
    """The rules one severity's alert reads, and that alert: over days of synthetic series
    every other rule (30-day mean, metadata, the other severity) would cost promtool time for
    nothing; the values test loads them all."""
    sli_group, _, alert_group = groups
    windows = {w for t in tiers(severity) for w in (t.short_window, t.long_window)}
    windows |= {CURRENT_WINDOW, HOURLY_WINDOW}  # what time-slice windows are averaged from
    return {
        "groups": [
            {
                **sli_group,
                "rules": [r for r in sli_group["rules"] if r["labels"]["sloth_window"] in windows],
            },
            {
                **alert_group,
                "rules": [
                    r
                    for r in alert_group["rules"]
                    if r.get("alert") == spec.slo.alerting.name
                    and r["labels"]["severity"] == severity
                ],
            },
        ]
    }


def tier_scenario(
    spec: SloSpec, tier: BurnTier, when: Timing, multiple: float, background: float = 1.0
) -> Scenario:
    """Errors at `multiple` times the tier's burn threshold after a clean background of
    `background` times the longest window of the severity. Above 1: quiet while the long window
    holds 85% of the threshold, firing once it is full, resolved after recovery; below 1: quiet
    once it is full."""
    longest = max(parse_ms(t.long_window) for t in tiers(tier.severity)) // when.step_ms
    background = _align(int(background * longest), when.every)
    long = parse_ms(tier.long_window) // when.step_ms
    every = when.every
    level = min(1.0, multiple * tier.factor * spec.error_budget)
    full = _align(background + long + 2 * every, every)  # no background left in the window
    label = f"{tier.severity} {tier.factor:g}x ({tier.long_window} and {tier.short_window})"
    if multiple < 1:
        return Scenario(
            f"{label}: stays quiet at {multiple:.2f}x its burn rate",
            ((0, 0.0), (background + 1, level)),
            (Check(full, tier.severity, False),),
        )
    before = _align(background + int(0.85 * long / multiple), every)
    # The alert resolves once the short window of every tier of its severity holds no burn.
    clear = max(parse_ms(t.short_window) for t in tiers(tier.severity)) // when.step_ms
    return Scenario(
        f"{label}: fires at {multiple:.2f}x its burn rate, resolves after recovery",
        ((0, 0.0), (background + 1, level)),
        (Check(before, tier.severity, False), Check(full, tier.severity, True)),
        recover_after=clear + 2 * every,
    )


def _first_group(
    spec: SloSpec,
    tier: BurnTier,
    *,
    fires: bool,
    rules: dict[tuple[str, str], dict[str, Any]],
    when: Timing,
    time_scale: float,
) -> dict[str, Any]:
    """The test group of the level closest to the threshold that shows its claim, after the
    shortest clean background that lets it (promtool's time grows with the evaluations)."""
    sign = 1 if fires else -1
    start = FIRE if fires else QUIET
    for n in range(LEVELS):
        for background in BACKGROUNDS:
            multiple = round(start + sign * n * LEVEL_STEP, 4)
            scenario = tier_scenario(spec, tier, when, multiple, background)
            try:
                return _burn_group(spec, scenario, rules, when, time_scale)
            except ScenarioError:
                continue
    raise AssertionError(
        f"{spec.id}: no error level within {LEVELS} steps of {start}x shows the {tier.factor:g}x "
        f"{tier.severity} tier {'firing' if fires else 'quiet'}: check the objective and windows"
    )


def enabled(spec: SloSpec) -> list[Severity]:
    """The severities this SLO alerts with."""
    alerting = spec.slo.alerting
    pairs: tuple[tuple[Severity, bool], ...] = (
        ("page", alerting.page_alert.disable),
        ("ticket", alerting.ticket_alert.disable),
    )
    return [severity for severity, disabled in pairs if not disabled]


# -- burn-rate test groups ---------------------------------------------------------------------


def _burn_group(
    spec: SloSpec,
    scenario: Scenario,
    rules: dict[tuple[str, str], dict[str, Any]],
    when: Timing,
    time_scale: float,
) -> dict[str, Any]:
    room = 8 * when.every  # evaluations a check may move forward to settle
    horizon = max(check.step for check in scenario.checks) + scenario.recover_after + 2 * room
    process = Process(spec, scenario, horizon, when)
    settled = [_settle(spec, process, check) for check in scenario.checks]
    if scenario.recover_after:
        # Errors stop right after the alert fired; it must be gone once the windows clear.
        fired, _ = settled[-1]
        scenario = replace(scenario, phases=(*scenario.phases, (fired + 1, 0.0)))
        process = Process(spec, scenario, horizon, when)
        check = Check(fired + scenario.recover_after, scenario.checks[-1].severity, False)
        settled.append(_settle(spec, process, check))
    tests = [
        {
            "eval_time": _duration(step * when.step_ms, time_scale),
            "alertname": spec.slo.alerting.name,
            "exp_alerts": [
                _expected(rules[(spec.slo.alerting.name, sev)], _sli_labels(spec))
                for sev, fires in state.items()
                if fires
            ],
        }
        for step, state in settled
    ]
    return {
        "name": f"{spec.slo.alerting.name} {scenario.name}",
        "interval": _duration(when.step_ms, time_scale),
        "input_series": _series(spec, process, time_scale),
        "alert_rule_test": tests,
    }


def _settle(spec: SloSpec, process: Process, check: Check) -> tuple[int, dict[Severity, bool]]:
    """The first evaluation at or after the check's step whose outcome is unambiguous and what
    the check claims; a scenario that cannot show its claim is a bug, never a skip."""
    every = process.when.every
    for step in range(check.step, check.step + 8 * every, every):
        state = firing(spec, process, step, [check.severity])
        if state is not None and state[check.severity] == check.fires:
            return step, state
    raise ScenarioError(
        f"{spec.id}: no evaluation near step {check.step} shows {check.severity} "
        f"{'firing' if check.fires else 'quiet'}: the scenario does not test what it claims"
    )


# -- recorded values ---------------------------------------------------------------------------


def _value_groups(spec: SloSpec, time_scale: float) -> list[dict[str, Any]]:
    """An hour of constant traffic: every window and metadata rule reads its exact value.

    All bad reads 1, all good 0; for a ratio SLI also the counter its error (or good) query
    reads never created (no fallback answered yet): 0 (or 1), never an empty result."""
    when = Timing(_slice_ms(spec), MINUTE_MS)
    at = 60 * MINUTE_MS // when.step_ms
    cases: list[tuple[float, str, str]] = [
        (1.0, "all bad: every window reads 1", ""),
        (0.0, "all good: every window reads 0", ""),
    ]
    ratio = spec.slo.indicator.ratio_metric
    if ratio is not None:
        missing = "bad" if ratio.bad else "good"
        cases.append(
            (
                0.0 if ratio.bad else 1.0,
                f"no {missing} counter yet: it reads as no {missing} events",
                missing,
            )
        )
    groups = []
    for level, name, omit in cases:
        process = Process(spec, Scenario(name, ((0, level),)), at + 1, when)
        groups.append(
            {
                "name": f"{spec.id} recorded values, {name}",
                "interval": _duration(when.step_ms, time_scale),
                "input_series": _series(spec, process, time_scale, omit=omit),
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": _duration(at * when.step_ms, time_scale),
                        "exp_samples": [{"labels": _series_text(labels), "value": value}],
                    }
                    for expr, labels, value in _expected_values(spec, level)
                ],
            }
        )
    return groups


def _expected_values(spec: SloSpec, level: float) -> list[tuple[str, dict[str, str], float]]:
    """(query, labels, value) of every recording rule of the SLO with constant error `level`."""
    ids = id_labels(spec)
    selector = "{" + ", ".join(f'{k}="{v}"' for k, v in ids.items()) + "}"
    sli = _sli_labels(spec)
    budget = 1 - round(spec.slo.objective / 100, 12)  # what `vector(1-0.995)` computes
    burn = level / budget
    values: list[tuple[str, dict[str, str], float]] = [
        (
            f"{sli_error_metric(w)}{selector}",
            {"__name__": sli_error_metric(w), **sli, "sloth_window": w},
            level,
        )
        for w in (*SLI_WINDOWS, PERIOD)
    ]
    meta = {**ids, **spec.labels}
    values += [
        (
            f"slo:objective:ratio{selector}",
            {"__name__": "slo:objective:ratio", **meta},
            round(spec.slo.objective / 100, 12),
        ),
        (
            f"slo:error_budget:ratio{selector}",
            {"__name__": "slo:error_budget:ratio", **meta},
            budget,
        ),
        (
            f"slo:time_period:days{selector}",
            {"__name__": "slo:time_period:days", **meta},
            float(PERIOD_DAYS),
        ),
        (
            f"slo:current_burn_rate:ratio{selector}",
            {"__name__": "slo:current_burn_rate:ratio", **sli, "sloth_window": CURRENT_WINDOW},
            burn,
        ),
        (
            f"slo:period_burn_rate:ratio{selector}",
            {"__name__": "slo:period_burn_rate:ratio", **sli, "sloth_window": PERIOD},
            burn,
        ),
        (
            f"slo:period_error_budget_remaining:ratio{selector}",
            {
                "__name__": "slo:period_error_budget_remaining:ratio",
                **sli,
                "sloth_window": PERIOD,
            },
            1 - burn,
        ),
    ]
    return values


# -- the absent alert --------------------------------------------------------------------------


def _absent_groups(
    spec: SloSpec, rules: dict[tuple[str, str], dict[str, Any]], time_scale: float
) -> list[dict[str, Any]]:
    absent = spec.slo.alerting.absent
    if absent.disable or not absent.name or not absent.series:
        return []
    when = Timing(_slice_ms(spec), MINUTE_MS)
    wait = parse_ms(absent.for_) // when.step_ms
    _, matchers = parse_selector(absent.series)
    labels = {label: value for label, op, value in matchers if op == "="}
    present = Process(spec, Scenario("present", ((0, 0.0),)), wait + 2, when)
    at = [_duration(n * when.step_ms, time_scale) for n in (wait - 1, wait + 1)]
    return [
        {
            "name": f"{absent.name}: fires once no series existed for {absent.for_}",
            "interval": _duration(when.step_ms, time_scale),
            "input_series": [
                {"series": 'mlre_unrelated{job="other"}', "values": f"1+0x{wait + 2}"}
            ],
            "alert_rule_test": [
                {"eval_time": at[0], "alertname": absent.name, "exp_alerts": []},
                {
                    "eval_time": at[1],
                    "alertname": absent.name,
                    "exp_alerts": [_expected(rules[(absent.name, absent.severity)], labels)],
                },
            ],
        },
        {
            "name": f"{absent.name}: quiet while the series exist",
            "interval": _duration(when.step_ms, time_scale),
            "input_series": _series(spec, present, time_scale),
            "alert_rule_test": [{"eval_time": at[1], "alertname": absent.name, "exp_alerts": []}],
        },
    ]


# -- series and expectations -------------------------------------------------------------------


def _series(
    spec: SloSpec, process: Process, time_scale: float, *, omit: str = ""
) -> list[dict[str, str]]:
    """promtool input series realising the process with the spec's test series (without the
    ratio role `omit`)."""
    ratio, threshold = spec.slo.indicator.ratio_metric, spec.slo.indicator.threshold_metric
    if ratio is not None:
        good = [process.total - bad for bad in process.bad]
        every = [float(process.total)] * len(process.bad)
        roles = (("good", good), ("bad", process.bad), ("all", every))
        return [
            {"series": series, "values": _counter(increments)}
            for role, increments in roles
            if role != omit
            for series in getattr(ratio.test_series, role)
        ]
    assert threshold is not None
    seconds = process.when.step_ms / 1000 / time_scale
    return [
        {
            "series": item.series,
            "values": _gauge(
                [item.bad if flag else item.good for flag in process.bad],
                seconds if item.relative_to_time else 0.0,
            ),
        }
        for item in threshold.test_series
    ]


def _counter(increments: Sequence[float]) -> str:
    """Expanding notation of a counter from COUNTER_START growing by `increments[1:]`."""
    parts = [_num(COUNTER_START)]
    value = float(COUNTER_START)
    for size, run in _runs(increments[1:]):
        parts.append(f"{_num(value + size)}+{_num(size)}x{run - 1}")
        value += size * run
    return " ".join(parts)


def _gauge(values: Sequence[float], slope: float) -> str:
    """Expanding notation of a gauge: runs of equal values, plus `slope` per step (a clock)."""
    parts = []
    step = 0
    for value, run in _runs(values):
        parts.append(f"{_num(value + slope * step)}+{_num(slope)}x{run - 1}")
        step += run
    return " ".join(parts)


def _runs(values: Sequence[float]) -> list[tuple[float, int]]:
    runs: list[tuple[float, int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    return runs


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """exp_labels / exp_annotations of a firing alert of `rule` over series with `labels`."""
    all_labels = {**labels, **rule["labels"]}
    annotations = {
        key: _TEMPLATE.sub(lambda m: all_labels.get(m.group(1), ""), text)
        for key, text in rule["annotations"].items()
    }
    return {"exp_labels": all_labels, "exp_annotations": annotations}


def _sli_labels(spec: SloSpec) -> dict[str, str]:
    """Labels of the recorded SLI series: the test series' groupBy values, ids, spec labels."""
    kept: dict[str, str] = {}
    for series in _test_series(spec):
        _, found = series_labels(series)
        kept.update({k: v for k, v in found.items() if k in spec.slo.indicator.group_by})
    return {**kept, **id_labels(spec), **spec.labels}


def _test_series(spec: SloSpec) -> list[str]:
    ratio, threshold = spec.slo.indicator.ratio_metric, spec.slo.indicator.threshold_metric
    if ratio is not None:
        return [*ratio.test_series.good, *ratio.test_series.bad, *ratio.test_series.all]
    assert threshold is not None
    return [item.series for item in threshold.test_series]


def _file(
    rules_file: str,
    eval_ms: int,
    order: list[str],
    groups: list[dict[str, Any]],
    time_scale: float,
) -> dict[str, Any]:
    return {
        "rule_files": [rules_file],
        "evaluation_interval": _duration(eval_ms, time_scale),
        "group_eval_order": order,
        "tests": groups,
    }


def _series_text(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
    return f"{name}{{{body}}}"


def _slice_ms(spec: SloSpec) -> int:
    threshold = spec.slo.indicator.threshold_metric
    return parse_ms(threshold.time_slice_window) if threshold is not None else MINUTE_MS


def _align(step: int, every: int) -> int:
    return -(-step // every) * every


def _duration(ms: float, time_scale: float) -> str:
    scaled = ms / time_scale
    if not float(scaled).is_integer():
        raise ValueError(f"{ms} ms / {time_scale} is not whole milliseconds: pick another scale")
    return format_ms(int(scaled)) if scaled else "0s"


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)

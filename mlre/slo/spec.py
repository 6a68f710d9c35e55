"""SLO specs as code: the reviewed YAML under `slos/`, validated into typed models.

One file per service, in OpenSLO v1's vocabulary (service, indicator as `ratioMetric` or
`thresholdMetric`, objective, `timeWindow`, `budgetingMethod`) with Sloth's alerting block (one
burn-rate alert name per SLO, page and ticket, plus an "SLI absent" alert). `load_specs` reads a
folder and raises `ConfigError` naming the file, the field path and what to do.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from mlre.errors import ConfigError
from mlre.remediation import ACTIONS, REMEDIATION_ANNOTATION
from mlre.slo.durations import parse_ms

API_VERSION = "mlre/v1"
KIND = "SLOSet"
WINDOW_PLACEHOLDER = "{{.window}}"
# Labels the generator writes itself (Sloth's names): a spec may not set them.
RESERVED_LABELS = ("sloth_id", "sloth_service", "sloth_slo", "sloth_window", "sloth_severity")
# The burn-rate tiers' factors (rules.BURN_TIERS); an enabled alert whose tiers need more than
# 100% errors could never fire.
PAGE_FACTORS = (14.4, 6.0)
TICKET_FACTORS = (3.0, 1.0)
SMALLEST_WINDOW_MS = 5 * 60_000

_KEBAB = r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$"
_ALERT_NAME = r"^[A-Z][A-Za-z0-9]*$"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SELECTOR = re.compile(rf"^\s*({_METRIC})\s*(?:\{{(.*)\}})?\s*$", re.DOTALL)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")
_LABEL_TEMPLATE = re.compile(r"\{\{\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_BY_CLAUSE = re.compile(r"\bby\s*\(([^)]*)\)")

Labels = dict[str, str]
Matcher = tuple[str, str, str]  # (label, operator, value)


class _Spec(BaseModel):
    """Base of every spec model: YAML keys are camelCase, unknown keys are errors."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class TimeWindow(_Spec):
    """The SLO period: 30 days, rolling (the burn-rate tiers are the SRE workbook's for 30d)."""

    duration: Literal["30d"] = "30d"
    is_rolling: Literal[True] = True


class RatioTestSeries(_Spec):
    """Counters the generated promtool tests grow by good, bad or all events of a scenario."""

    good: list[str] = []
    bad: list[str] = []
    all: list[str] = []


class RatioMetric(_Spec):
    """Event ratio (OpenSLO `ratioMetric`): `bad/total` or `good/total`, `{{.window}}` in each."""

    good: str | None = None
    bad: str | None = None
    total: str
    test_series: RatioTestSeries


class BadWhen(_Spec):
    """The comparison that makes one time slice bad: `query <op> value`."""

    op: Literal["gt", "gte", "lt", "lte"]
    value: float


class GaugeTestSeries(_Spec):
    """A gauge the promtool tests set to `good` or `bad` (plus the time for a timestamp)."""

    series: str
    good: float
    bad: float
    relative_to_time: bool = False


class ThresholdMetric(_Spec):
    """Time-slice SLI (OpenSLO `thresholdMetric`, `Timeslices`): share of slices breaching."""

    query: str
    bad_when: BadWhen
    time_slice_window: str = "1m"
    test_series: list[GaugeTestSeries] = Field(min_length=1)


class Indicator(_Spec):
    """The SLI: exactly one of `ratioMetric` / `thresholdMetric`; `groupBy` labels it keeps."""

    ratio_metric: RatioMetric | None = None
    threshold_metric: ThresholdMetric | None = None
    group_by: list[str] = []


class AlertMeta(_Spec):
    """Extra labels/annotations of the page or ticket alert, or `disable: true`."""

    disable: bool = False
    labels: Labels = {}
    annotations: Labels = {}


class AbsentAlert(_Spec):
    """Fires when the SLI's base series is absent for `for` (the SLO cannot be measured)."""

    name: str | None = Field(None, pattern=_ALERT_NAME)
    series: str | None = None
    for_: str = Field("10m", alias="for")
    severity: Literal["page", "ticket"] = "ticket"
    disable: bool = False
    reason: str | None = None


class Alerting(_Spec):
    """Sloth's alerting block: one burn-rate alert name (page and ticket) plus the absent alert."""

    name: str = Field(pattern=_ALERT_NAME)
    labels: Labels = {}
    annotations: Labels = {}
    page_alert: AlertMeta = AlertMeta()
    ticket_alert: AlertMeta = AlertMeta()
    absent: AbsentAlert


class Slo(_Spec):
    """One SLO of a service."""

    name: str = Field(pattern=_KEBAB)
    description: str = Field(min_length=1)
    objective: float = Field(gt=0, lt=100)
    time_window: TimeWindow = TimeWindow()
    budgeting_method: Literal["Occurrences", "Timeslices"] | None = None
    cloud_only: bool = False
    labels: Labels = {}
    indicator: Indicator
    alerting: Alerting


class SloFile(_Spec):
    """One `slos/<service>.yaml`: the service and its SLOs."""

    api_version: Literal["mlre/v1"]
    kind: Literal["SLOSet"]
    service: str = Field(pattern=_KEBAB)
    description: str = Field(min_length=1)
    labels: Labels = {}
    slos: Annotated[list[Slo], Field(min_length=1)]


class SloSpec(BaseModel):
    """One loaded SLO with its service, merged labels and source: what the generator reads."""

    model_config = ConfigDict(frozen=True)

    service: str
    service_description: str
    source: Path
    index: int
    slo: Slo
    labels: Labels

    @property
    def id(self) -> str:
        """Sloth's SLO id: `<service>-<slo>`."""
        return f"{self.service}-{self.slo.name}"

    @property
    def name(self) -> str:
        """The SLO's name within its service."""
        return self.slo.name

    @property
    def error_budget(self) -> float:
        """Allowed error ratio: 1 - objective/100 (0.005 for 99.5), rounded to hide float noise."""
        return round((100 - self.slo.objective) / 100, 12)

    @property
    def alert_names(self) -> list[str]:
        """Every alert this SLO generates: the burn-rate alert, then the absent alert if any."""
        names = [self.slo.alerting.name]
        absent = self.slo.alerting.absent
        if not absent.disable and absent.name:
            names.append(absent.name)
        return names


def load_specs(folder: Path) -> list[SloSpec]:
    """Every SLO of every `*.yaml` in `folder`, validated; ConfigError names file and field."""
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise ConfigError(
            f"no SLO specs in {folder}: expected one `<service>.yaml` per service "
            f"(apiVersion: {API_VERSION}, kind: {KIND}); see slos/README.md."
        )
    specs = [spec for path in files for spec in load_file(path)]
    _check_unique(specs)
    return specs


def load_file(path: Path) -> list[SloSpec]:
    """The SLOs of one spec file, validated."""
    raw = _read_yaml(path)
    try:
        parsed = SloFile.model_validate(raw)
    except ValidationError as exc:
        problems = [_pydantic_problem(raw, error) for error in exc.errors()]
        raise _invalid(path, problems) from None
    problems = [problem for i, slo in enumerate(parsed.slos) for problem in check_slo(slo, i)]
    problems += _label_problems(parsed.labels, "labels")
    if problems:
        raise _invalid(path, problems)
    return [
        SloSpec(
            service=parsed.service,
            service_description=parsed.description,
            source=path,
            index=i,
            slo=slo,
            labels={**parsed.labels, **slo.labels},
        )
        for i, slo in enumerate(parsed.slos)
    ]


def parse_selector(text: str) -> tuple[str, list[Matcher]]:
    """`name{a="x", b=~"y"}` -> ("name", [("a", "=", "x"), ("b", "=~", "y")]); ValueError if not."""
    match = _SELECTOR.match(text or "")
    if not match:
        raise ValueError(f'{text!r} is not a series selector like name{{label="value"}}')
    name, body = match.group(1), (match.group(2) or "").strip()
    matchers: list[Matcher] = []
    position = 0
    while position < len(body):
        part = _MATCHER.match(body, position)
        if not part or part.end() == position:
            raise ValueError(f"{text!r}: cannot read the label matchers at {body[position:]!r}")
        matchers.append((part.group(1), part.group(2), part.group(3)))
        position = part.end()
    return name, matchers


def selector_matches(selector: str, series: str) -> bool:
    """Whether the selector `selector` selects the literal series `series`."""
    name, matchers = parse_selector(selector)
    series_name, series_matchers = parse_selector(series)
    labels = {label: value for label, _, value in series_matchers}
    return name == series_name and all(
        _matcher_holds(op, value, labels.get(label, "")) for label, op, value in matchers
    )


def series_labels(series: str) -> tuple[str, Labels]:
    """Name and labels of a literal series (only `=` matchers); ValueError otherwise."""
    name, matchers = parse_selector(series)
    others = [f"{label}{op}" for label, op, _ in matchers if op != "="]
    if others:
        raise ValueError(f'{series!r} is a selector, not one series: use only label="value"')
    return name, {label: value for label, _, value in matchers}


def template_labels(text: str) -> list[str]:
    """Label names an annotation template reads (`{{ $labels.x }}`)."""
    return _LABEL_TEMPLATE.findall(text)


def queries(slo: Slo) -> list[str]:
    """The SLI's PromQL queries as written in the spec."""
    ratio, threshold = slo.indicator.ratio_metric, slo.indicator.threshold_metric
    if ratio is not None:
        return [q for q in (ratio.good, ratio.bad, ratio.total) if q]
    return [threshold.query] if threshold is not None else []


# -- semantic checks: each yields (field path, problem and what to do) -----------------------


def check_slo(slo: Slo, index: int) -> Iterator[tuple[str, str]]:
    """Problems pydantic's types cannot see (cross-field rules), with their field paths."""
    at = f"slos[{index}] ({slo.name})"
    yield from _indicator_problems(slo, f"{at}.indicator")
    yield from _objective_problems(slo, at)
    yield from _alerting_problems(slo, f"{at}.alerting")
    yield from _label_problems(slo.labels, f"{at}.labels")


def _indicator_problems(slo: Slo, at: str) -> Iterator[tuple[str, str]]:
    ind = slo.indicator
    if (ind.ratio_metric is None) == (ind.threshold_metric is None):
        yield at, "needs exactly one of ratioMetric (events) or thresholdMetric (time slices)"
        return
    expected = "Occurrences" if ind.ratio_metric is not None else "Timeslices"
    if slo.budgeting_method not in (None, expected):
        yield (
            at.replace(".indicator", ".budgetingMethod"),
            f"{slo.budgeting_method} does not fit this indicator: write {expected} or leave it out",
        )
    if ind.ratio_metric is not None:
        yield from _ratio_problems(ind.ratio_metric, f"{at}.ratioMetric")
    else:
        assert ind.threshold_metric is not None
        yield from _threshold_problems(ind.threshold_metric, f"{at}.thresholdMetric")
    yield from _group_by_problems(slo, at)
    yield from _test_series_problems(slo, at)


def _ratio_problems(ratio: RatioMetric, at: str) -> Iterator[tuple[str, str]]:
    if (ratio.good is None) == (ratio.bad is None):
        yield (
            at,
            "needs exactly one of good or bad (with total): the SLI is bad/total or 1-good/total",
        )
    for field in ("good", "bad", "total"):
        query = getattr(ratio, field)
        if query is None:
            continue
        if WINDOW_PLACEHOLDER not in query:
            yield (
                f"{at}.{field}",
                f"needs the {WINDOW_PLACEHOLDER} placeholder as its range, e.g. "
                f"rate(x[{WINDOW_PLACEHOLDER}]): the generator renders one rule per window",
            )
        others = [p for p in _PLACEHOLDER.findall(query) if p != WINDOW_PLACEHOLDER]
        if others:
            yield f"{at}.{field}", f"unknown placeholder(s) {others}: only {WINDOW_PLACEHOLDER}"


def _threshold_problems(threshold: ThresholdMetric, at: str) -> Iterator[tuple[str, str]]:
    if _PLACEHOLDER.search(threshold.query):
        yield (
            f"{at}.query",
            "takes no placeholder: write an instant expression; the generator averages "
            "`query <op> bool value` over each window",
        )
    try:
        slice_ms = parse_ms(threshold.time_slice_window)
    except ValueError as exc:
        yield f"{at}.timeSliceWindow", str(exc)
        return
    if SMALLEST_WINDOW_MS % slice_ms:
        yield (
            f"{at}.timeSliceWindow",
            f"{threshold.time_slice_window} must divide the smallest window (5m) evenly, "
            "e.g. 1m, 30s or 15s",
        )


def _group_by_problems(slo: Slo, at: str) -> Iterator[tuple[str, str]]:
    for label in slo.indicator.group_by:
        if not _LABEL_NAME.match(label):
            yield f"{at}.groupBy", f"{label!r} is not a label name"
        for query in queries(slo):
            kept = {
                name.strip() for clause in _BY_CLAUSE.findall(query) for name in clause.split(",")
            }
            if label not in kept:
                yield (
                    f"{at}.groupBy",
                    f"{label!r} is not kept by the query {query!r}: aggregate with `by ({label})` "
                    "or remove it from groupBy",
                )


def _test_series_problems(slo: Slo, at: str) -> Iterator[tuple[str, str]]:
    ratio, threshold = slo.indicator.ratio_metric, slo.indicator.threshold_metric
    if ratio is not None:
        where = f"{at}.ratioMetric.testSeries"
        series = [
            (f"{where}.{role}[{i}]", text)
            for role in ("good", "bad", "all")
            for i, text in enumerate(getattr(ratio.test_series, role))
        ]
        if not ratio.test_series.good or not (ratio.test_series.bad or ratio.test_series.all):
            yield (
                where,
                "needs good and (bad or all) counters: the promtool tests grow them to drive "
                "the SLI to a chosen error ratio",
            )
    else:
        assert threshold is not None
        series = [
            (f"{at}.thresholdMetric.testSeries[{i}].series", item.series)
            for i, item in enumerate(threshold.test_series)
        ]
    group_values: dict[str, set[str]] = {}
    texts = " ".join(queries(slo))
    for path, text in series:
        try:
            name, labels = series_labels(text)
        except ValueError as exc:
            yield path, str(exc)
            continue
        if not re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", texts):
            yield (
                path,
                f"{name} appears in none of the SLI's queries: test the series the SLI reads",
            )
        for label in slo.indicator.group_by:
            if label not in labels:
                yield path, f"needs the groupBy label {label!r} (the alert is per {label})"
            group_values.setdefault(label, set()).add(labels.get(label, ""))
    for label, values in group_values.items():
        if len(values) > 1:
            yield at, f"the test series disagree on groupBy label {label!r} ({sorted(values)})"


def _objective_problems(slo: Slo, at: str) -> Iterator[tuple[str, str]]:
    budget = (100 - slo.objective) / 100
    for meta, factors, kind in (
        (slo.alerting.page_alert, PAGE_FACTORS, "page"),
        (slo.alerting.ticket_alert, TICKET_FACTORS, "ticket"),
    ):
        if not meta.disable and max(factors) * budget >= 1:
            need = 100 * (1 - 1 / max(factors))
            yield (
                f"{at}.objective",
                f"{slo.objective}% leaves a {budget:.4g} error budget: the {kind} alert's "
                f"{max(factors):g}x tier would need more than 100% errors and can never fire; "
                f"raise the objective above {need:.2f}% or set alerting.{kind}Alert.disable",
            )


def _alerting_problems(slo: Slo, at: str) -> Iterator[tuple[str, str]]:
    alerting = slo.alerting
    allowed = {"sloth_id", "sloth_service", "sloth_slo", "sloth_severity", "severity"}
    allowed |= set(slo.indicator.group_by) | set(slo.labels) | set(alerting.labels)
    for field, meta in (("pageAlert", alerting.page_alert), ("ticketAlert", alerting.ticket_alert)):
        yield from _label_problems(meta.labels, f"{at}.{field}.labels")
        yield from _annotation_problems(meta.annotations, f"{at}.{field}.annotations", allowed)
    yield from _label_problems(alerting.labels, f"{at}.labels")
    yield from _annotation_problems(alerting.annotations, f"{at}.annotations", allowed)
    for field, values in (
        ("annotations", alerting.annotations),
        ("pageAlert.annotations", alerting.page_alert.annotations),
        ("ticketAlert.annotations", alerting.ticket_alert.annotations),
    ):
        action = values.get(REMEDIATION_ANNOTATION)
        if action is not None and action not in ACTIONS:
            yield (
                f"{at}.{field}.{REMEDIATION_ANNOTATION}",
                f"{action!r} is not a remediation; use one of {sorted(ACTIONS)} "
                "(mlre/remediation.py) or leave it out to page only",
            )
    if alerting.page_alert.disable and alerting.ticket_alert.disable:
        yield at, "disables both the page and the ticket alert: an SLO must alert somehow"
    yield from _absent_problems(slo, f"{at}.absent")


def _absent_problems(slo: Slo, at: str) -> Iterator[tuple[str, str]]:
    absent = slo.alerting.absent
    if absent.disable:
        if not absent.reason:
            yield (
                f"{at}.reason",
                "say why this SLO has no absent alert (e.g. its series come and go)",
            )
        return
    if not absent.name:
        yield f"{at}.name", "required: the absent alert's name (runbooks/<name>.md documents it)"
    elif absent.name == slo.alerting.name:
        yield f"{at}.name", f"{absent.name} is also the burn-rate alert's name: pick another"
    try:
        parse_ms(absent.for_)
    except ValueError as exc:
        yield f"{at}.for", str(exc)
    if not absent.series:
        yield f"{at}.series", "required: the base series whose absence blinds the SLI"
        return
    try:
        name, _ = parse_selector(absent.series)
    except ValueError as exc:
        yield f"{at}.series", str(exc)
        return
    if not re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", " ".join(queries(slo))):
        yield f"{at}.series", f"{name} appears in none of the SLI's queries"
    if not any(selector_matches(absent.series, s) for s in _all_test_series(slo)):
        yield (
            f"{at}.series",
            f"{absent.series} selects none of the indicator's testSeries: the promtool test "
            "feeds those to show the alert stays quiet while the series exist",
        )


def _all_test_series(slo: Slo) -> list[str]:
    ratio, threshold = slo.indicator.ratio_metric, slo.indicator.threshold_metric
    if ratio is not None:
        ts = ratio.test_series
        candidates = [*ts.good, *ts.bad, *ts.all]
    elif threshold is not None:
        candidates = [item.series for item in threshold.test_series]
    else:
        candidates = []
    valid = []
    for text in candidates:
        try:
            series_labels(text)
        except ValueError:
            continue
        valid.append(text)
    return valid


def _label_problems(labels: Labels, at: str) -> Iterator[tuple[str, str]]:
    for name in labels:
        if not _LABEL_NAME.match(name):
            yield at, f"{name!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        elif name in RESERVED_LABELS:
            yield at, f"{name!r} is written by the generator: remove it"


def _annotation_problems(
    annotations: Labels, at: str, allowed: set[str]
) -> Iterator[tuple[str, str]]:
    for key, text in annotations.items():
        rest = _LABEL_TEMPLATE.sub("", text)
        if "{{" in rest:
            yield (
                f"{at}.{key}",
                "may only template {{ $labels.<name> }} (the promtool tests expand exactly that)",
            )
        unknown = [name for name in template_labels(text) if name not in allowed]
        if unknown:
            yield f"{at}.{key}", f"reads label(s) {unknown} the alert does not carry"


def _matcher_holds(op: str, expected: str, actual: str) -> bool:
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    found = re.fullmatch(expected, actual) is not None
    return found if op == "=~" else not found


# -- files and errors --------------------------------------------------------------------------


def _read_yaml(path: Path) -> Any:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}): fix the syntax "
            "and run `mlre slo generate`."
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping with apiVersion, kind, service, description and slos; "
            f"got {type(raw).__name__}. See slos/README.md."
        )
    return raw


def _invalid(path: Path, problems: Iterable[tuple[str, str]]) -> ConfigError:
    lines = [f"  {where}: {what}" for where, what in problems]
    return ConfigError(
        f"{path}: invalid SLO spec ({len(lines)} problem{'s' if len(lines) != 1 else ''}):\n"
        + "\n".join(lines)
        + "\nFix the spec (field names are camelCase, see slos/README.md) and run "
        "`mlre slo generate`."
    )


def _pydantic_problem(raw: Any, error: Any) -> tuple[str, str]:
    """(field path, message with what to do) of one pydantic error."""
    loc = tuple(error["loc"])
    path = _field_path(raw, loc)
    kind = error["type"]
    if kind == "missing":
        return path, "required: add it"
    if kind == "extra_forbidden":
        known = ", ".join(_known_fields(loc[:-1])) or "none"
        return path, f"unknown field: remove it or fix its spelling (fields here: {known})"
    message = str(error["msg"]).removeprefix("Value error, ")
    return path, f"{message} (got {error.get('input')!r})"


def _field_path(raw: Any, loc: tuple[Any, ...]) -> str:
    """`slos[0] (availability).indicator.ratioMetric.total` for a pydantic location."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            name = (
                node[item].get("name")
                if _indexable(node, item) and isinstance(node[item], dict)
                else None
            )
            parts[-1] += f"[{item}]" + (f" ({name})" if name else "")
        else:
            parts.append(str(item))
        node = _child(node, item)
    return ".".join(parts) or "(top level)"


def _indexable(node: Any, item: int) -> bool:
    return isinstance(node, list) and -len(node) <= item < len(node)


def _child(node: Any, item: Any) -> Any:
    if isinstance(item, int):
        return node[item] if _indexable(node, item) else None
    return node.get(item) if isinstance(node, dict) else None


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The YAML field names allowed at `loc` (walks the models along the location)."""
    model: Any = SloFile
    for item in loc:
        model = _unwrap(model)
        if isinstance(item, int) or not _is_model(model):
            continue
        field = next((f for n, f in model.model_fields.items() if item in {f.alias or n, n}), None)
        if field is None:
            return []
        model = field.annotation
    model = _unwrap(model)
    if not _is_model(model):
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _unwrap(annotation: Any) -> Any:
    """The model inside `X | None`, `list[X]` or `Annotated[list[X], ...]`."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (list, Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            annotation = args[0] if args else annotation
            if origin is not list and len(args) != 1:
                return annotation
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _check_unique(specs: list[SloSpec]) -> None:
    """Duplicate SLO ids or alert names across the specs are errors naming both places."""
    seen_ids: dict[str, SloSpec] = {}
    seen_alerts: dict[str, SloSpec] = {}
    for spec in specs:
        where = f"{spec.source} (slos[{spec.index}])"
        first = seen_ids.setdefault(spec.id, spec)
        if first is not spec:
            raise ConfigError(
                f"SLO id {spec.id!r} (service-name) is defined twice: {first.source} "
                f"(slos[{first.index}]) and {where}: rename one of them."
            )
        for alert in spec.alert_names:
            owner = seen_alerts.setdefault(alert, spec)
            if owner is not spec:
                raise ConfigError(
                    f"alert {alert!r} is generated twice: by {owner.source} (slos[{owner.index}], "
                    f"{owner.id}) and {where} ({spec.id}): alert names key the runbooks, make "
                    "them unique."
                )


__all__ = [
    "AbsentAlert",
    "AlertMeta",
    "Alerting",
    "BadWhen",
    "GaugeTestSeries",
    "Indicator",
    "RatioMetric",
    "RatioTestSeries",
    "Slo",
    "SloFile",
    "SloSpec",
    "ThresholdMetric",
    "TimeWindow",
    "load_file",
    "load_specs",
    "parse_selector",
    "queries",
    "selector_matches",
    "series_labels",
]

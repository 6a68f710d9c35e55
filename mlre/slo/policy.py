"""The error-budget policy: a model change waits while the SLOs it could hurt have no budget left.

`promote-model` and `canary-rollout` (flows/) ask `decide` before they move an alias or route a
share: a change is refused while any SLO that gates it (`GATES`: the model's quality and the
serving availability and latency, for both) has spent its 30-day error budget, with one reason
per spent SLO naming it and the budget left. An operator may go ahead anyway (`Override`, with
an actor and a reason); the decision then says who overrode what, and the flows append
`audit_note` to the registry's audit record. Rollbacks are never gated: they reduce risk.

Fail-open on purpose: when the budgets cannot be read (no Prometheus configured, Prometheus
down, an SLO without series yet), the change is allowed with a reason saying what could not be
checked and why, so a monitoring outage never blocks the fix for the outage it hides. Setting
`MLRE_BUDGET_POLICY_FAIL_CLOSED=true` refuses instead (an override still goes through).

Pure over `SloStatus` rows; `read_budgets` reads them from Prometheus the way `slo-report` does
(`read_slo_statuses` is that one construction, shared).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlre.errors import ConfigError, MlreError, ServiceUnavailableError
from mlre.prometheus_api import PrometheusError, Query, Sample, firing_alerts, querier
from mlre.settings import Settings
from mlre.slo.outputs import SPECS_DIR
from mlre.slo.spec import load_specs
from mlre.slo.status import SloStatus, read_status

Change = Literal["promote", "canary"]

# SLO ids (`<service>-<slo>`, Sloth's sloth_id) whose spent budget refuses a change.
MODEL_CHANGE_SLOS = ("model-quality", "serving-availability", "serving-latency")
GATES: Mapping[str, tuple[str, ...]] = {"promote": MODEL_CHANGE_SLOS, "canary": MODEL_CHANGE_SLOS}
CHANGE_NAMES: Mapping[str, str] = {"promote": "promotion", "canary": "canary rollout"}
# The label the model SLOs' series name their registered model with (groupBy in slos/model.yaml).
MODEL_LABEL = "model"
WHAT_TO_DO = (
    "wait for the budget to recover, fix the SLO's cause (see its runbook), or pass "
    "override_budget_policy=True with an override_reason (kept in the audit trail)"
)
NO_PROMETHEUS = (
    "no Prometheus is configured (monitoring is off, MLRE_MONITORING=false, and "
    "MLRE_PROMETHEUS_URL is not set)"
)


class BudgetPolicyError(MlreError):
    """A change was refused by the error-budget policy (or asked to override it without a why)."""


@dataclass(frozen=True)
class Override:
    """An operator's decision to go ahead despite a spent budget: who and why (both audited)."""

    actor: str
    why: str

    def __post_init__(self) -> None:
        if not self.why.strip():
            raise BudgetPolicyError(
                f"{self.actor}: override_budget_policy=True needs an override_reason saying why "
                "the change cannot wait for the error budget to recover; it goes into the "
                "registry's audit trail."
            )


@dataclass(frozen=True)
class BudgetPolicy:
    """Which SLOs gate which change, and what an unreadable budget means."""

    gates: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(GATES))
    fail_closed: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> BudgetPolicy:
        return cls(fail_closed=settings.budget_policy_fail_closed)

    def slos_for(self, change: str) -> tuple[str, ...]:
        if change not in self.gates:
            raise ConfigError(
                f"The error-budget policy knows no change {change!r}; known: {sorted(self.gates)}."
            )
        return self.gates[change]


@dataclass(frozen=True)
class PolicyDecision:
    """Whether a change may go ahead, and why: one line per gating SLO, plus what could not be
    checked and any override. `blocking` holds the lines that refuse (kept when overridden)."""

    change: str
    allowed: bool
    reasons: list[str]
    blocking: list[str] = field(default_factory=list)
    overridden: bool = False
    override: Override | None = None
    statuses: list[SloStatus] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if not self.allowed:
            return "refused"
        return "overridden" if self.overridden else "allowed"

    @property
    def what(self) -> str:
        """The change in words ("promotion", "canary rollout")."""
        return CHANGE_NAMES.get(self.change, self.change)

    def audit_note(self) -> str:
        """What the audit record's reason gets when an override let a refused change through."""
        if not self.overridden or self.override is None:
            return ""
        spent = "; ".join(self.blocking)
        return (
            f" [error-budget policy overridden by {self.override.actor}: {self.override.why} "
            f"(refused for: {spent})]"
        )

    def refusal_message(self, subject: str) -> str:
        """The BudgetPolicyError text: what was refused, each blocking reason, what to do."""
        return (
            f"Error-budget policy refuses the {self.what} of {subject}: "
            f"{'; '.join(self.blocking)}. To go ahead: {WHAT_TO_DO}."
        )

    def markdown(self, subject: str) -> str:
        """The Prefect artifact: verdict, reasons and the gating SLOs' budgets."""
        lines = [
            f"# Error-budget policy: {self.verdict}",
            "",
            f"The {self.what} of {subject}: **{self.verdict}**.",
            "",
            *[f"- {reason}" for reason in self.reasons],
        ]
        if self.statuses:
            lines += ["", "| SLO | budget left (30d) | verdict | alerts |", "|---|---|---|---|"]
            lines += [
                f"| {s.slo_id} | {_percent(s.budget_remaining)} | {s.verdict} | "
                f"{', '.join(s.alerts) or '-'} |"
                for s in self.statuses
            ]
        if not self.allowed:
            lines += ["", f"To go ahead: {WHAT_TO_DO}."]
        return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def decide(
    statuses: Sequence[SloStatus],
    change: str,
    *,
    policy: BudgetPolicy | None = None,
    override: Override | None = None,
    unavailable: str = "",
) -> PolicyDecision:
    """The policy's decision on `change` given every SLO's status (`read_budgets`).

    `unavailable` says why no status could be read (then `statuses` is empty). Exhausted gating
    SLOs refuse; burning ones are named but allowed; ones without data (or the whole read
    failing) are allowed with a reason, unless the policy fails closed. An `override` turns a
    refusal into "allowed, overridden by <actor>: <why>".
    """
    policy = policy or BudgetPolicy()
    gating = policy.slos_for(change)
    by_id = {s.slo_id: s for s in statuses}
    reasons: list[str] = []
    blocking: list[str] = []
    unchecked: list[str] = []
    if unavailable:
        unchecked.append(f"could not read the error budgets: {unavailable}")
    else:
        for slo_id in gating:
            kind, line = _slo_line(slo_id, by_id.get(slo_id))
            if kind == "unchecked":
                unchecked.append(line)
                continue
            reasons.append(line)
            if kind == "blocking":
                blocking.append(line)
    if unchecked:
        if policy.fail_closed:
            line = (
                "the error-budget policy could not be checked and fails closed "
                f"(MLRE_BUDGET_POLICY_FAIL_CLOSED=true): {'; '.join(unchecked)}"
            )
            blocking.append(line)
        else:
            line = (
                "the error-budget policy could not be checked, which does not refuse the change "
                "(fail-open; MLRE_BUDGET_POLICY_FAIL_CLOSED=true would): " + "; ".join(unchecked)
            )
        reasons.append(line)
    overridden = False
    if override is not None and blocking:
        overridden = True
        reasons.append(f"overridden by {override.actor}: {override.why}")
    elif override is not None:
        reasons.append(f"override requested by {override.actor} but not needed: nothing refused")
    return PolicyDecision(
        change=change,
        allowed=not blocking or overridden,
        reasons=reasons,
        blocking=blocking,
        overridden=overridden,
        override=override,
        statuses=[by_id[slo_id] for slo_id in gating if slo_id in by_id],
    )


def _slo_line(slo_id: str, status: SloStatus | None) -> tuple[str, str]:
    """(kind, line) of one gating SLO: kind is blocking, info or unchecked."""
    if status is None:
        return "unchecked", f"{slo_id}: not among the SLO specs (slos/*.yaml)"
    left = f"{_percent(status.budget_remaining)} left of the 30-day budget"
    if status.verdict == "no data":
        return "unchecked", f"{slo_id}: no data in Prometheus (nothing scraped or pushed yet)"
    if status.verdict == "exhausted":
        return "blocking", f"{slo_id} error budget exhausted: {left}"
    if status.verdict == "burning":
        alerts = ", ".join(status.alerts)
        return "info", f"{slo_id} is burning its error budget ({alerts} firing): {left}"
    return "info", f"{slo_id}: {_percent(status.budget_remaining)} of the 30-day error budget left"


def enforce(decision: PolicyDecision, subject: str) -> PolicyDecision:
    """The decision if allowed; BudgetPolicyError naming the reasons and what to do if not."""
    if not decision.allowed:
        raise BudgetPolicyError(decision.refusal_message(subject))
    return decision


# -- reading the budgets ------------------------------------------------------------------------


def read_slo_statuses(
    prometheus_url: str, slo_dir: Path = SPECS_DIR, *, query: Query | None = None
) -> list[SloStatus]:
    """Every SLO's status from the Prometheus at `prometheus_url` (what `slo-report` shows)."""
    specs = load_specs(Path(slo_dir))
    return read_status(query or querier(prometheus_url), firing_alerts(prometheus_url), specs)


def for_model(query: Query, model_name: str) -> Query:
    """`query` without the series of other registered models (the model SLOs' series carry a
    `model` label; series without one, like the serving SLOs', all pass)."""

    def filtered(promql: str) -> list[Sample]:
        return [s for s in query(promql) if s.labels.get(MODEL_LABEL, model_name) == model_name]

    return filtered


@dataclass(frozen=True)
class BudgetReading:
    """The SLO statuses read, or why none could be (`problem`, then `statuses` is empty)."""

    statuses: list[SloStatus]
    problem: str = ""


def read_budgets(
    settings: Settings,
    *,
    prometheus_url: str | None = None,
    model_name: str | None = None,
    slo_dir: Path = SPECS_DIR,
) -> BudgetReading:
    """The statuses the policy decides on, from `prometheus_url` (default: the settings'
    Prometheus); the model SLOs' rows are `model_name`'s. Never raises for an unreadable budget
    (no Prometheus, Prometheus down or refusing, no specs): `problem` says why, `decide` acts."""
    url = prometheus_url or settings.prometheus_endpoint
    if not url:
        return BudgetReading([], NO_PROMETHEUS)
    query = querier(url)
    if model_name:
        query = for_model(query, model_name)
    try:
        return BudgetReading(read_slo_statuses(url, slo_dir, query=query))
    except (ServiceUnavailableError, PrometheusError, ConfigError) as exc:
        return BudgetReading([], str(exc))

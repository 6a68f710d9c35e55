"""Canary rollout: sticky routing, prediction-divergence measures and the per-step decision.

The state a rollout controls lives in MLflow, so the serving layer's poller sees it without a
restart: alias `challenger` is the canary version, and the registered-model tag `canary.share`
(0..1) is the share of entities routed to it. Routing is sticky per entity key: the same customer
always lands on the same arm for a given share, and raising the share only adds customers.

Everything above the "Registry side effects" section is pure (numpy / text in, values out).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from mlre.errors import MlreError
from mlre.prometheus_api import Query, label_value, scalar

CANARY_SHARE_TAG = "canary.share"
CANARY_VERSION_TAG = "canary.version"
CANARY_RESULT_TAG = "canary.result"
CANARY_REASON_TAG = "canary.reason"
CANARY_ROLLBACK_ACTION = "canary-rollback"
BUCKETS = 10_000
EPSILON = 1e-4

# Metric names the serving layer exports and the rollout reads back (one place for both).
REQUESTS_METRIC = "mlre_serving_predictions"
ERRORS_METRIC = "mlre_serving_errors"
LATENCY_METRIC = "mlre_serving_request_latency_seconds"
SHARE_METRIC = "mlre_serving_canary_share"
MODEL_INFO_METRIC = "mlre_serving_model_info"


class CanaryError(MlreError):
    """A canary rollout input or state is invalid (share out of range, no challenger, ...)."""


# --------------------------------------------------------------------------------------------
# Sticky routing
# --------------------------------------------------------------------------------------------


def bucket(key: object) -> int:
    """Stable bucket in [0, BUCKETS) of an entity key (sha256, the same in every process)."""
    digest = hashlib.sha256(str(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def check_share(share: float) -> float:
    """The share as a float in [0, 1], or a CanaryError naming the value."""
    value = float(share)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise CanaryError(f"Canary share {share!r} is outside [0, 1]; use e.g. 0.05 for 5 %.")
    return value


def in_canary(key: object, share: float) -> bool:
    """Whether an entity goes to the canary at this share (sticky; monotone in share)."""
    return bucket(key) < round(share * BUCKETS)


def parse_share(text: str | None) -> float:
    """The `canary.share` tag as a float; missing or malformed means no canary (0)."""
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return 0.0
    return value if 0.0 <= value <= 1.0 else 0.0


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------


def _clean(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, float)
    return array[np.isfinite(array)]


def bin_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Quantile edges of the reference (deduplicated), open at both ends."""
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.concatenate([[-np.inf], inner, [np.inf]])


def histogram_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin, floored at EPSILON so logs stay finite."""
    counts, _ = np.histogram(values, bins=edges)
    shares = counts / max(len(values), 1)
    shares = np.maximum(shares, EPSILON)
    return shares / shares.sum()


def psi(reference: Iterable[float], current: Iterable[float], bins: int = 10) -> float:
    """Population stability index of `current` against `reference` (quantile bins of reference).

    Rule of thumb: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift.
    """
    ref, cur = _clean(reference), _clean(current)
    if not len(ref) or not len(cur):
        raise CanaryError("PSI needs at least one finite value on each side.")
    edges = bin_edges(ref, bins)
    p, q = histogram_shares(ref, edges), histogram_shares(cur, edges)
    return float(np.sum((q - p) * np.log(q / p)))


def js_divergence(reference: Iterable[float], current: Iterable[float], bins: int = 10) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) over the reference's quantile bins."""
    ref, cur = _clean(reference), _clean(current)
    if not len(ref) or not len(cur):
        raise CanaryError("Jensen-Shannon needs at least one finite value on each side.")
    edges = bin_edges(ref, bins)
    p, q = histogram_shares(ref, edges), histogram_shares(cur, edges)
    m = (p + q) / 2
    return float(0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m)))


# --------------------------------------------------------------------------------------------
# Service-level indicators from Prometheus text
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmStats:
    """Counters and latency buckets of one route (champion or canary) at one moment."""

    predictions: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound s, cumulative count)

    def minus(self, before: ArmStats) -> ArmStats:
        """What happened between `before` and this snapshot."""
        old = dict(before.buckets)
        return ArmStats(
            predictions=self.predictions - before.predictions,
            errors=self.errors - before.errors,
            buckets=tuple((le, count - old.get(le, 0.0)) for le, count in self.buckets),
        )

    @property
    def error_rate(self) -> float:
        attempts = self.predictions + self.errors
        return self.errors / attempts if attempts else 0.0

    def latency_quantile(self, q: float) -> float | None:
        """Upper bucket bound holding quantile q of request latency, in seconds (None: no data)."""
        if not self.buckets or self.buckets[-1][1] <= 0:
            return None
        target = q * self.buckets[-1][1]
        for upper, count in self.buckets:
            if count >= target:
                return upper
        return self.buckets[-1][0]


def arm_stats(metrics_text: str, version: str, route: str) -> ArmStats:
    """Predictions, errors and latency buckets of `version` served on `route` from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    predictions = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model_version") != version:
                continue
            if sample.name == f"{REQUESTS_METRIC}_total" and labels.get("route") == route:
                predictions += sample.value
            elif sample.name == f"{ERRORS_METRIC}_total":
                errors += sample.value
            elif sample.name == f"{LATENCY_METRIC}_bucket" and labels.get("route") == route:
                upper = float(labels["le"])
                buckets[upper] = buckets.get(upper, 0.0) + sample.value
    ordered = tuple(sorted(buckets.items()))
    return ArmStats(predictions=predictions, errors=errors, buckets=ordered)


def worker_states(metrics_text: str) -> dict[str, tuple[float, dict[str, str]]]:
    """(canary share, slot -> version) by worker process: the `pid` label a service with several
    workers gives these gauges (prometheus_client's multiprocess mode), "" for one process."""
    from prometheus_client.parser import text_string_to_metric_families

    shares: dict[str, float] = {}
    slots: dict[str, dict[str, str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            pid = sample.labels.get("pid", "")
            if sample.name == SHARE_METRIC:
                shares[pid] = sample.value
            elif sample.name == MODEL_INFO_METRIC and sample.value == 1:
                slots.setdefault(pid, {})[sample.labels["slot"]] = sample.labels["version"]
    return {pid: (shares.get(pid, 0.0), slots.get(pid, {})) for pid in shares.keys() | slots}


def served_state(metrics_text: str) -> tuple[float, dict[str, str]]:
    """(canary share, slot -> version) the service reports it is serving right now: the state
    every worker reports, or (nan, {}) while its workers differ (mid-switch)."""
    states = {
        (share, tuple(sorted(slots.items())))
        for share, slots in worker_states(metrics_text).values()
    }
    if not states:
        return 0.0, {}
    if len(states) > 1:
        return math.nan, {}
    ((share, slots),) = states
    return share, dict(slots)


def _window(seconds: float) -> str:
    return f"{max(math.ceil(seconds), 1)}s"


def arm_stats_from_prometheus(query: Query, version: str, route: str, window_s: float) -> ArmStats:
    """What `version` on `route` did over the last `window_s`, summed over EVERY replica that
    Prometheus scrapes (one pod's /metrics would judge a random pod)."""
    v, r, w = label_value(version), label_value(route), _window(window_s)
    served = f'model_version="{v}",route="{r}"'
    predictions = scalar(query(f"sum(increase({REQUESTS_METRIC}_total{{{served}}}[{w}]))"), 0.0)
    errors = scalar(query(f'sum(increase({ERRORS_METRIC}_total{{model_version="{v}"}}[{w}]))'), 0.0)
    rows = query(f"sum by (le) (increase({LATENCY_METRIC}_bucket{{{served}}}[{w}]))")
    buckets = sorted((float(s.labels["le"]), s.value) for s in rows)
    return ArmStats(predictions=predictions, errors=errors, buckets=tuple(buckets))


def replicas_switched(query: Query, version: str, share: float) -> tuple[int, int]:
    """(replicas serving `version` as canary at `share`, replicas Prometheus sees serving).

    A replica with several worker processes reports the state per worker (a `pid` label); it is
    switched once every one of its workers is. One-process replicas have no `pid` label, which
    matches as empty on both sides."""
    v = label_value(version)
    workers = f"count by (instance) ({SHARE_METRIC})"
    switched_workers = (
        f"({SHARE_METRIC} == {share!r}) and on (instance, pid) "
        f'({MODEL_INFO_METRIC}{{slot="canary",version="{v}"}} == 1)'
    )
    total = scalar(query(f"count({workers})"), 0.0)
    switched = scalar(
        query(f"count(count by (instance) ({switched_workers}) == on (instance) {workers})"),
        0.0,
    )
    return int(switched), int(total)


# --------------------------------------------------------------------------------------------
# The step decision
# --------------------------------------------------------------------------------------------


class CanaryThresholds(BaseModel):
    """Limits one rollout step must stay within; any breach rolls the canary back."""

    max_psi: float = Field(0.2, ge=0, description="PSI of canary vs champion scores (>0.2: shift).")
    max_js: float = Field(0.1, ge=0, le=1, description="Jensen-Shannon divergence, base 2.")
    bins: int = Field(10, ge=2, le=100, description="Quantile bins of the champion's scores.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary errors / attempts.")
    max_latency_p99_ms: float = Field(50.0, gt=0, description="Canary request p99 latency.")
    min_score_std: float = Field(1e-6, ge=0, description="Below this the scores are constant.")


@dataclass(frozen=True)
class StepEvidence:
    """What one step observed: both arms' scores from the log and their SLIs from /metrics."""

    share: float
    champion_scores: np.ndarray
    canary_scores: np.ndarray
    champion: ArmStats
    canary: ArmStats


@dataclass(frozen=True)
class StepDecision:
    """Healthy or not, why, and the numbers behind it (a row of the step's artifact)."""

    share: float
    healthy: bool
    reasons: list[str]
    measures: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Flat dict for a Prefect table artifact."""
        return {
            "share": self.share,
            "healthy": self.healthy,
            "reasons": "; ".join(self.reasons) or "all checks passed",
            **self.measures,
        }


def score_problems(scores: np.ndarray, arm: str, min_std: float) -> list[str]:
    """Scores must be finite probabilities in [0, 1] and not constant."""
    problems = []
    if not len(scores):
        return [f"{arm}: no scores"]
    if not np.all(np.isfinite(scores)):
        problems.append(f"{arm}: {int(np.sum(~np.isfinite(scores)))} non-finite scores")
    finite = scores[np.isfinite(scores)]
    if len(finite) and (finite.min() < 0 or finite.max() > 1):
        problems.append(
            f"{arm}: scores outside [0, 1] (min {finite.min():.3f}, max {finite.max():.3f})"
        )
    if len(finite) > 1 and float(np.std(finite)) <= min_std:
        problems.append(f"{arm}: scores are constant ({finite[0]:.4f})")
    return problems


def decide_step(evidence: StepEvidence, thresholds: CanaryThresholds) -> StepDecision:
    """Compare canary with champion on one step: divergence, SLIs, score sanity."""
    t = thresholds
    reasons = score_problems(evidence.canary_scores, "canary", t.min_score_std)
    measures: dict[str, Any] = {
        "champion_n": len(evidence.champion_scores),
        "canary_n": len(evidence.canary_scores),
    }
    if len(evidence.canary_scores) and len(evidence.champion_scores):
        p = psi(evidence.champion_scores, evidence.canary_scores, t.bins)
        js = js_divergence(evidence.champion_scores, evidence.canary_scores, t.bins)
        measures.update(psi=round(p, 4), js=round(js, 4))
        if p > t.max_psi:
            reasons.append(f"PSI {p:.3f} > {t.max_psi} (canary scores diverge from champion)")
        if js > t.max_js:
            reasons.append(f"Jensen-Shannon {js:.3f} > {t.max_js}")
        measures["canary_mean"] = round(float(np.nanmean(evidence.canary_scores)), 4)
        measures["champion_mean"] = round(float(np.nanmean(evidence.champion_scores)), 4)
    elif not len(evidence.champion_scores):
        reasons.append("champion: no scores to compare against")
    rate = evidence.canary.error_rate
    measures["canary_error_rate"] = round(rate, 4)
    if rate > t.max_error_rate:
        reasons.append(f"canary error rate {rate:.3%} > {t.max_error_rate:.3%}")
    p99 = evidence.canary.latency_quantile(0.99)
    measures["canary_p99_ms"] = None if p99 is None else round(p99 * 1000, 2)
    champion_p99 = evidence.champion.latency_quantile(0.99)
    measures["champion_p99_ms"] = None if champion_p99 is None else round(champion_p99 * 1000, 2)
    if p99 is not None and p99 * 1000 > t.max_latency_p99_ms:
        reasons.append(f"canary p99 latency {p99 * 1000:.1f} ms > {t.max_latency_p99_ms} ms")
    return StepDecision(evidence.share, not reasons, reasons, measures)


def enough_predictions(counts: Mapping[str, int], minimum: int) -> bool:
    """Both arms have at least `minimum` logged predictions."""
    return all(counts.get(arm, 0) >= minimum for arm in ("champion", "canary"))


def check_steps(steps: Iterable[float]) -> list[float]:
    """Strictly increasing shares in (0, 1]."""
    shares = [check_share(s) for s in steps]
    if not shares or any(s <= 0 for s in shares) or shares != sorted(set(shares)):
        raise CanaryError(
            f"Canary steps {shares} must be non-empty, strictly increasing and above 0 "
            "(e.g. [0.05, 0.25, 0.5])."
        )
    return shares


# --------------------------------------------------------------------------------------------
# Registry side effects (thin; the flow calls them inside tasks)
# --------------------------------------------------------------------------------------------


def set_share(client: Any, model_name: str, share: float) -> None:
    """Publish the canary share on the registered model (the service's poller picks it up)."""
    client.set_registered_model_tag(model_name, CANARY_SHARE_TAG, f"{check_share(share):g}")


def record_canary_rollback(
    client: Any,
    model_name: str,
    version: str,
    *,
    reason: str,
    run_id: str,
    actor: str,
    lock: Any,
) -> Any:
    """Stop the canary: share 0, challenger removed, version tagged, audit record stored."""
    from mlre import registry

    with lock(model_name):
        set_share(client, model_name, 0.0)
        model = registry.get_model(client, model_name)
        if model.aliases.get(registry.CHALLENGER) == str(version):
            client.delete_registered_model_alias(model_name, registry.CHALLENGER)
        clipped = reason[: registry.REASON_MAX]
        for key, value in {
            registry.ROLLED_BACK_TAG: "true",
            registry.ROLLED_BACK_REASON_TAG: clipped,
            CANARY_RESULT_TAG: "rolled_back",
            CANARY_REASON_TAG: clipped,
        }.items():
            client.set_model_version_tag(model_name, str(version), key, value)
        # Same storage as registry.promote/rollback: the next audit.NNNNNN tag, under the lock.
        seqs = registry.audit_seqs(model.tags)
        seq = (seqs[-1] if seqs else 0) + 1
        record = registry.AuditRecord(
            when=datetime.now(UTC).isoformat(timespec="milliseconds"),
            action=CANARY_ROLLBACK_ACTION,
            from_version=model.aliases.get(registry.CHAMPION),
            to_version=str(version),
            reason=reason,
            run_id=run_id,
            actor=actor,
            seq=seq,
        )
        client.set_registered_model_tag(model_name, registry.audit_key(seq), record.to_json())
    return record

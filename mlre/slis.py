"""The SLIs the batch flows publish, pushed to Prometheus' Pushgateway; Prefect-free.

The series contract (rules, dashboards and runbooks read exactly these names):

| series | labels | meaning |
|---|---|---|
| `mlre_feature_newest_event_timestamp_seconds` | feature_view | newest event time written online |
| `mlre_materialization_success` | feature_view | 1 the last materialization succeeded, else 0 |
| `mlre_feature_mismatch_ratio` | feature_view | online/offline mismatch share, last check |
| `mlre_model_drift_share` | model, version | share of drifted columns, last drift check |
| `mlre_model_drift_threshold` | model, version | the share at which the check says drifted |
| `mlre_model_quality_auc` | model, version | ROC AUC on labelled predictions (pooled) |
| `mlre_model_quality_baseline_auc` | model, version | the version's evaluation-time ROC AUC |
| `mlre_flow_run_success` | flow, deployment | 1 Completed, 0 Failed or Crashed |
| `mlre_flow_run_finished_timestamp_seconds` | flow, deployment | when that run ended |

Every push goes to job `mlre-flows` under a grouping key (`flow` plus the view, model or
deployment) that a re-run reuses, so it REPLACES its group's values instead of adding a series;
a model's group does not hold the version, so a new champion's values replace the old one's.
A push never fails the caller: a short timeout, and a failure is logged, counted
(`push_counts()`) and returned as False. With no Pushgateway configured nothing is pushed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

JOB = "mlre-flows"
PUSH_TIMEOUT_S = 2.0

FEATURE_NEWEST_EVENT = "mlre_feature_newest_event_timestamp_seconds"
MATERIALIZATION_SUCCESS = "mlre_materialization_success"
FEATURE_MISMATCH_RATIO = "mlre_feature_mismatch_ratio"
MODEL_DRIFT_SHARE = "mlre_model_drift_share"
MODEL_DRIFT_THRESHOLD = "mlre_model_drift_threshold"
MODEL_QUALITY_AUC = "mlre_model_quality_auc"
MODEL_QUALITY_BASELINE_AUC = "mlre_model_quality_baseline_auc"
FLOW_RUN_SUCCESS = "mlre_flow_run_success"
FLOW_RUN_FINISHED = "mlre_flow_run_finished_timestamp_seconds"

HELP = {
    FEATURE_NEWEST_EVENT: "Newest event time (unix s) materialized into the online store",
    MATERIALIZATION_SUCCESS: "1 when the view's last materialization succeeded, else 0",
    FEATURE_MISMATCH_RATIO: "Share of sampled keys whose online value disagrees with offline",
    MODEL_DRIFT_SHARE: "Share of the model's input columns that drifted in the last check",
    MODEL_DRIFT_THRESHOLD: "Drifted-column share at which the drift check flags the model",
    MODEL_QUALITY_AUC: "ROC AUC of the version on labelled predictions (pooled window)",
    MODEL_QUALITY_BASELINE_AUC: "ROC AUC of the version at evaluation time",
    FLOW_RUN_SUCCESS: "1 when the flow's last run Completed, 0 when it Failed or Crashed",
    FLOW_RUN_FINISHED: "When the flow's last run finished (unix s)",
}


@dataclass(frozen=True)
class Sample:
    """One gauge value with its labels."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Push:
    """What goes to the Pushgateway in one request: a group and its gauges.

    `replace=True` PUTs (every series of the group is replaced by these); False POSTs (only the
    series named here are replaced, the group's others stay, e.g. the last good freshness when a
    run failed).
    """

    grouping: Mapping[str, str]
    samples: Sequence[Sample]
    replace: bool = True
    job: str = JOB


@dataclass
class _Counts:
    """How pushes went in this process (pushed, failed, skipped), thread-safe."""

    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] += 1


_COUNTS = _Counts()


def push_counts() -> dict[str, int]:
    """Pushes this process made, by outcome: `pushed`, `failed`, `skipped` (none configured)."""
    with _COUNTS.lock:
        return dict(_COUNTS.counts)


class _Snapshot(Collector):
    """The samples as gauge families, no prometheus_client value objects (which Feast's import
    may have switched to multiprocess files)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_name: dict[str, list[Sample]] = {}
        for sample in self.samples:
            by_name.setdefault(sample.name, []).append(sample)
        for name, samples in by_name.items():
            labels = sorted({key for s in samples for key in s.labels})
            family = GaugeMetricFamily(name, HELP.get(name, name), labels=labels)
            for s in samples:
                family.add_metric([str(s.labels.get(key, "")) for key in labels], s.value)
            yield family


def registry_of(samples: Sequence[Sample]) -> CollectorRegistry:
    """A private registry holding just these samples (what one push sends)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(samples))
    return registry


def push(gateway_url: str, pushes: Iterable[Push], *, timeout_s: float = PUSH_TIMEOUT_S) -> bool:
    """Send each push; True when all arrived. Never raises: failures are logged and counted.

    An empty `gateway_url` (no Pushgateway configured) sends nothing and returns False.
    """
    ok = True
    for item in pushes:
        if not gateway_url:
            _COUNTS.add("skipped")
            ok = False
            continue
        send = push_to_gateway if item.replace else pushadd_to_gateway
        try:
            send(
                gateway_url,
                job=item.job,
                registry=registry_of(item.samples),
                grouping_key=dict(item.grouping),
                timeout=timeout_s,
            )
        except Exception as exc:  # monitoring must never fail the run it observes
            _COUNTS.add("failed")
            ok = False
            log.warning(
                "SLIs %s not pushed to the Pushgateway at %s (group %s): %s; the run goes on.",
                sorted({s.name for s in item.samples}),
                gateway_url,
                dict(item.grouping),
                exc,
            )
        else:
            _COUNTS.add("pushed")
    return ok


# ---- what each flow pushes (pure) ------------------------------------------------------------


def timestamp(moment: datetime) -> float:
    """Unix seconds of a datetime (a naive one is read as UTC, as the lake's times are)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def materialization(
    flow: str, view: str, *, succeeded: bool, newest_event: datetime | None
) -> Push:
    """A view's materialization outcome; with its newest event time when this run knows it.

    Without one (a failed run, or nothing new) only the success gauge is replaced, so the last
    known freshness stays in the group.
    """
    labels = {"feature_view": view}
    samples = [Sample(MATERIALIZATION_SUCCESS, labels, 1.0 if succeeded else 0.0)]
    if newest_event is not None:
        samples.append(Sample(FEATURE_NEWEST_EVENT, labels, timestamp(newest_event)))
    return Push({"flow": flow, "feature_view": view}, samples, replace=newest_event is not None)


def mismatch(flow: str, view: str, ratio: float) -> Push:
    """A view's online/offline mismatch share (NaN: no key could be compared)."""
    labels = {"feature_view": view}
    return Push(
        {"flow": flow, "feature_view": view}, [Sample(FEATURE_MISMATCH_RATIO, labels, ratio)]
    )


def drift(flow: str, model: str, version: str, *, share: float, threshold: float) -> Push:
    """The drifted-column share of a model version and the threshold it is judged against."""
    labels = {"model": model, "version": version}
    return Push(
        {"flow": flow, "model": model},
        [
            Sample(MODEL_DRIFT_SHARE, labels, share),
            Sample(MODEL_DRIFT_THRESHOLD, labels, threshold),
        ],
    )


def quality(flow: str, model: str, version: str, *, auc: float, baseline_auc: float) -> Push:
    """Delayed-label ROC AUC of a model version next to its evaluation-time value."""
    labels = {"model": model, "version": version}
    return Push(
        {"flow": flow, "model": model},
        [
            Sample(MODEL_QUALITY_AUC, labels, auc),
            Sample(MODEL_QUALITY_BASELINE_AUC, labels, baseline_auc),
        ],
    )


def flow_run(flow: str, deployment: str, *, succeeded: bool, finished: datetime) -> Push:
    """A flow run's outcome, from Prefect's final state ("" deployment: not run from one)."""
    labels = {"flow": flow, "deployment": deployment}
    return Push(
        labels,
        [
            Sample(FLOW_RUN_SUCCESS, labels, 1.0 if succeeded else 0.0),
            Sample(FLOW_RUN_FINISHED, labels, timestamp(finished)),
        ],
    )


def ratio(bad: int, compared: int) -> float:
    """bad / compared, NaN when nothing was compared (not measurable is not 'all good')."""
    return bad / compared if compared else math.nan

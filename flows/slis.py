"""The flows' SLIs: one call per flow module, and the flow-run state hooks every deployed flow
carries (`@flow(..., **slis.flow_run_hooks())`).

The series and their grouping are the core's (mlre.slis); this layer reads the settings for
the Pushgateway, takes the flow run's own state from Prefect, and logs a failed push to the run's
log as a warning: monitoring being down never fails a run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_run_logger
from prefect.states import State

from mlre import slis
from mlre.features.consistency import ConsistencyReport
from mlre.monitoring import POOLED, Baseline, WindowMetrics
from mlre.settings import get_settings

FlowHook = Callable[[Any, FlowRun, State], None]

MATERIALIZE_FLOW = "materialize-features"
CONSISTENCY_FLOW = "validate-feature-consistency"
DRIFT_FLOW = "check-drift"
MONITOR_FLOW = "monitor-performance"


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow run's logger inside a run, the module's elsewhere (a hook after the run)."""
    try:
        return get_run_logger()
    except Exception:  # no run context
        return logging.getLogger(__name__)


def publish(pushes: Iterable[slis.Push]) -> bool:
    """Push to the configured Pushgateway; a failure is a warning in the run's log, never raised."""
    pushes = list(pushes)
    gateway = get_settings().pushgateway_endpoint
    if not gateway:
        return False
    ok = slis.push(gateway, pushes)
    if not ok:
        _logger().warning(
            "Some SLIs could not be pushed to %s (counts so far: %s); the run goes on. Check the "
            "Pushgateway (`mlre status`) or MLRE_PUSHGATEWAY_URL.",
            gateway,
            slis.push_counts(),
        )
    return ok


# ---- per-flow SLIs ---------------------------------------------------------------------------


def materialization(
    views: Iterable[str], finished: dict[str, datetime | None], *, freshness: bool
) -> bool:
    """Each selected view: success 1 when it finished (a key of `finished`), else 0, and the
    newest event time it wrote when `freshness` (the run reached now) and it wrote any."""
    return publish(
        slis.materialization(
            MATERIALIZE_FLOW,
            view,
            succeeded=view in finished,
            newest_event=finished.get(view) if freshness else None,
        )
        for view in views
    )


def consistency(reports: Iterable[ConsistencyReport]) -> bool:
    """Each checked view's mismatch share (keys with a wrong or absent value / keys compared)."""
    return publish(
        slis.mismatch(
            CONSISTENCY_FLOW, r.feature_view, slis.ratio(len(r.bad_keys), r.compared_keys)
        )
        for r in reports
    )


def drift(model: str, version: str, share: float, threshold: float) -> bool:
    """The drifted-column share of the checked version and its threshold."""
    return publish([slis.drift(DRIFT_FLOW, model, version, share=share, threshold=threshold)])


def quality(model: str, version: str, windows: Iterable[WindowMetrics], baseline: Baseline) -> bool:
    """Delayed-label ROC AUC of the version (the pooled window) next to its evaluation-time
    value; NaN when the pooled window has no AUC (one class only)."""
    pooled = next((w.roc_auc for w in windows if w.window == POOLED), math.nan)
    return publish(
        [slis.quality(MONITOR_FLOW, model, version, auc=pooled, baseline_auc=baseline.roc_auc)]
    )


# ---- pipeline SLIs from Prefect's own state --------------------------------------------------


def deployment_name(flow_run: FlowRun) -> str:
    """The name of the deployment the run was created from ("" for a direct call or subflow)."""
    if flow_run.deployment_id is None:
        return ""
    with get_client(sync_client=True) as client:
        return str(client.read_deployment(flow_run.deployment_id).name)


def record_flow_run(flow: Any, flow_run: FlowRun, state: State) -> None:
    """State hook: push the run's outcome (1 Completed, 0 Failed/Crashed) and when it ended."""
    try:
        deployment = deployment_name(flow_run)
    except Exception as exc:  # the API may be what failed; the outcome still counts
        _logger().warning("Could not read the deployment of run %s: %s", flow_run.id, exc)
        deployment = ""
    finished = state.timestamp or datetime.now(UTC)
    publish(
        [slis.flow_run(flow.name, deployment, succeeded=state.is_completed(), finished=finished)]
    )


def flow_run_hooks() -> dict[str, list[FlowHook]]:
    """`on_completion`, `on_failure` and `on_crashed` hooks for `@flow(...)` (fresh lists:
    Prefect appends to a flow's own lists)."""
    return {
        "on_completion": [record_flow_run],
        "on_failure": [record_flow_run],
        "on_crashed": [record_flow_run],
    }

"""Flow `validate-feature-consistency`: online values against point-in-time offline values."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from flows import slis
from flows._common import StoreParams, server_task, store_for
from mlre.errors import ConsistencyError
from mlre.features import consistency as checks
from mlre.features.materialize import view_spec
from mlre.features.store import select_views


class ConsistencyParams(StoreParams):
    """Which views to check, how many keys, and how strict."""

    feature_views: list[str] | None = Field(None, description="Views (default: all).")
    feature_service: str | None = Field(None, description="Or: the views this service reads.")
    sample_size: int = Field(1_000, ge=1, description="Entity keys sampled per view.")
    seed: int = Field(0, description="Sampling seed (same seed, same keys).")
    tolerance: float = Field(1e-6, ge=0, description="Numeric tolerance (relative and absolute).")
    max_mismatch_rate: float = Field(0.001, ge=0, le=1, description="Fail above this share.")
    offline_reader: Literal["duckdb", "feast"] = Field(
        "duckdb", description="duckdb reads only the TTL window; feast uses its own PIT join."
    )


@server_task("check-view-consistency", retries=2, retry_delay_seconds=[2, 5])
def check_view(params: ConsistencyParams, view: str) -> checks.ConsistencyReport:
    """Compare one view's online values with its offline values at the watermark."""
    store = store_for(params.repo_path, params.store_profile)
    feature_view = store.get_feature_view(view, allow_registry_cache=False)
    return checks.check_view(
        store,
        feature_view,
        view_spec(store, feature_view),
        sample_size=params.sample_size,
        seed=params.seed,
        tolerance=params.tolerance,
        offline_reader=params.offline_reader,
    )


def _publish(reports: list[checks.ConsistencyReport], decision: checks.ConsistencyDecision) -> None:
    create_table_artifact(
        key="feature-consistency",
        table=[
            {
                "feature_view": f.feature_view,
                "feature": f.feature,
                "keys_compared": f.compared,
                "mismatches": f.mismatches,
                "missing_online": f.missing_online,
                "unexpected_online": f.unexpected_online,
                "stale_keys": f.stale,
                "mismatch_rate": round(f.mismatch_rate, 6),
                "example_keys": ", ".join(map(str, f.example_keys)),
            }
            for report in reports
            for f in report.features
        ],
        description="Online vs point-in-time offline values, per feature.",
    )
    verdict = "consistent" if decision.consistent else "INCONSISTENT"
    lines = [
        f"# Online/offline consistency: {verdict}",
        "",
        f"Mismatch rate {decision.mismatch_rate:.4%} (threshold {decision.threshold:.4%}).",
        "",
        *(
            f"- {r.feature_view}: {r.sampled} keys at watermark {r.watermark:%Y-%m-%d %H:%M} UTC, "
            f"{len(r.stale_keys)} stale (older than ttl)"
            for r in reports
        ),
        "",
        *(f"- {reason}" for reason in decision.reasons),
    ]
    create_markdown_artifact(key="feature-consistency-verdict", markdown="\n".join(lines))


@flow(name="validate-feature-consistency", log_prints=True, **slis.flow_run_hooks())
def validate_feature_consistency(
    params: ConsistencyParams | None = None,
) -> checks.ConsistencyDecision:
    """Check online values key by key; fail the run when the mismatch rate passes the threshold."""
    params = params or ConsistencyParams()
    store = store_for(params.repo_path, params.store_profile)
    views = [fv.name for fv in select_views(store, params.feature_views, params.feature_service)]
    reports = [check_view(params, view) for view in views]
    decision = checks.decide(reports, params.max_mismatch_rate)
    slis.consistency(reports)
    _publish(reports, decision)
    if not decision.consistent:
        raise ConsistencyError(
            f"Online store disagrees with the offline store: mismatch rate "
            f"{decision.mismatch_rate:.4%} > {decision.threshold:.4%}. "
            + "; ".join(decision.reasons[:5])
            + ". Re-run materialize-features (backfill) for the affected views."
        )
    return decision

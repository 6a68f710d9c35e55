"""Flow `feature-pipeline`: materialize the features, then check online against offline."""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.transactions import CommitMode, Transaction, transaction

from flows import resume
from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.materialize import MaterializeParams, materialize_features
from mlre.features.consistency import ConsistencyDecision
from mlre.features.materialize import PartitionResult
from mlre.settings import get_settings

PARTITION_TASK = "materialize-partition"


def _forget_partitions(scope: str) -> Callable[[Transaction], None]:
    """Rollback hook: forget the partitions written for `scope`, so that a retry (after the
    source is fixed) writes them again instead of reading back values that failed the check."""

    def hook(_: Transaction) -> None:
        forgotten = resume.forget(get_settings().results_root, scope, PARTITION_TASK)
        get_run_logger().warning(
            "Consistency failed: %s written partitions forgotten; a retry of this run writes "
            "them again.",
            forgotten,
        )

    return hook


@flow(name="feature-pipeline")
def feature_pipeline(
    materialize: MaterializeParams | None = None, consistency: ConsistencyParams | None = None
) -> tuple[list[PartitionResult], ConsistencyDecision]:
    """Materialize every view, then validate online/offline consistency (two subflows).

    The check runs in a Prefect transaction whose rollback forgets the partitions this run
    wrote (flows/resume.py): after a failed check, a retry writes them again rather than read
    back what failed it. The online store keeps the values; the check's error says how to
    rewrite them. A failed or crashed materialization keeps its finished partitions."""
    written = materialize_features(materialize or MaterializeParams())
    scope = resume.run_scope(flow_run.get_id())
    # EAGER, so nothing the check persists waits on this transaction; its own rollback hook
    # runs when the check's subflow raises inside it.
    with transaction(commit_mode=CommitMode.EAGER) as txn:
        txn.stage(None, on_rollback_hooks=[_forget_partitions(scope)])
        decision = validate_feature_consistency(consistency or ConsistencyParams())
    return written, decision

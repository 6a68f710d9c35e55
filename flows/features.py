"""Flow `feature-pipeline`: materialize the features, then check online against offline."""

from __future__ import annotations

from prefect import flow

from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.materialize import MaterializeParams, materialize_features
from mlre.features.consistency import ConsistencyDecision
from mlre.features.materialize import PartitionResult


@flow(name="feature-pipeline")
def feature_pipeline(
    materialize: MaterializeParams | None = None, consistency: ConsistencyParams | None = None
) -> tuple[list[PartitionResult], ConsistencyDecision]:
    """Materialize every view, then validate online/offline consistency (two subflows)."""
    written = materialize_features(materialize or MaterializeParams())
    decision = validate_feature_consistency(consistency or ConsistencyParams())
    return written, decision

"""Model drills: the delayed-label quality loop of slos/model.yaml.

- degraded-champion: a labelling bug inverts `is_fraud` in the label events a retrain reads. The
  challenger learns the inverted labels, beats the champion on them and is promoted by the weekly
  pipeline. The real labels then make it wrong: monitor-performance measures its ROC AUC far
  below the value it had at evaluation, the model-quality SLO pages, `remediate/rollback-model`
  restores the previous champion (healthy: it passed its gate and was never rolled back), the
  next monitor-performance run judges that one, and the quality SLI recovers.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.drills.platform import DrillPlatform, DrillResult, follow, landed, run_deployment

PIPELINE = "ml-pipeline/weekly"
MONITOR = "monitor-performance/daily"
LABELS = "sources/transactions"
MISLABELLED = "sources/transactions_mislabelled"
LABEL_COLUMN = "is_fraud"
SCORED_DAYS = 7  # what monitor-performance judges by default; a week of rows steadies the AUC
MAX_AUC_DROP = 0.05  # slos/model.yaml: quality is bad when the AUC is this far below baseline


def degraded_champion(p: DrillPlatform) -> DrillResult:
    """A champion promoted on inverted labels -> quality page -> rollback to the previous one."""
    from mlflow import MlflowClient

    result = DrillResult(
        "degraded-champion",
        f"the promoted champion was trained and gated on label events with {LABEL_COLUMN} "
        "inverted; the real labels arrive",
        "ModelQualityBudgetBurn (page)",
    )
    landed(p)
    model = p.settings.model_name
    client = MlflowClient(p.settings.mlflow_tracking_uri)
    scored_from = _midnight() - timedelta(days=SCORED_DAYS)
    inference = {"start": scored_from.isoformat()}
    p.echo(f"training the first champion ({PIPELINE}) ...")
    _require_completed(PIPELINE, run_deployment(PIPELINE, {"params": {"inference": inference}}))
    healthy = _champion(client, model)
    _invert_labels(p.settings.lake_dir / LABELS, p.settings.lake_dir / MISLABELLED)
    p.echo(f"v{healthy} is champion; retraining on {MISLABELLED} ({LABEL_COLUMN} inverted) ...")
    retrain = {"train": {"label_source": MISLABELLED}, "inference": inference}
    _require_completed(PIPELINE, run_deployment(PIPELINE, {"params": retrain}))
    degraded = _champion(client, model)
    if degraded == healthy:
        raise RuntimeError(f"the mislabelled challenger was not promoted (champion v{healthy})")
    before = _stored(p, client, scored_from)
    began = time.monotonic()  # the alert's delay includes the monitoring run that measures it
    p.echo(f"v{degraded} is champion; {MONITOR} judges it on the real labels ...")
    # The drill follows the SLO alert's remediation alone: the monitor's own degraded event
    # (which starts the retrain automation, a different loop with its own tests) is switched off.
    monitor = {"params": {"emit_events": False}}
    _require_completed(MONITOR, run_deployment(MONITOR, monitor))
    quality = (
        f'max(max by (model, version) (mlre_model_quality_baseline_auc{{model="{model}"}}) '
        f'- on (model, version) max by (model, version) (mlre_model_quality_auc{{model="{model}"}})'
        f") <= {MAX_AUC_DROP}"
    )

    def next_monitoring_run() -> None:  # the daily schedule, judging the restored champion
        p.echo(f"  {MONITOR} judges the champion now ...")
        _require_completed(MONITOR, run_deployment(MONITOR, monitor))

    follow(p, result, alert="ModelQualityBudgetBurn", action="rollback-model",
           labels={"model": model, "version": degraded}, healthy=quality, began=began,
           then=next_monitoring_run)  # fmt: skip
    after = _stored(p, client, scored_from)
    restored = _champion(client, model)
    result.nothing_lost = (
        restored == healthy
        and before["versions"] <= after["versions"]
        and after["predictions"] >= before["predictions"]
    )
    result.notes.append(
        f"champion v{degraded} -> v{restored} (previous champion v{healthy}); versions "
        f"{sorted(before['versions'])} -> {sorted(after['versions'])}; logged predictions "
        f"{before['predictions']} -> {after['predictions']}"
    )
    return result


def _midnight() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _require_completed(deployment: str, state: str) -> None:
    if state != "COMPLETED":
        raise RuntimeError(f"{deployment} ended {state}; the drill cannot set up its failure")


def _champion(client: Any, model: str) -> str:
    from mlre import registry

    champion = registry.champion_version(client, model)
    if champion is None:
        raise RuntimeError(f"model {model!r} has no champion after the pipeline")
    return str(champion.version)


def _invert_labels(source: Path, target: Path) -> int:
    """Copy a parquet event folder with the label inverted (the injected labelling bug)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(source.rglob("*.parquet"))
    for path in files:
        table = pq.read_table(path)
        column = table[LABEL_COLUMN]
        inverted = pc.subtract(pa.scalar(1, type=column.type), column)
        table = table.set_column(table.schema.get_field_index(LABEL_COLUMN), LABEL_COLUMN, inverted)
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
    if not files:
        raise RuntimeError(f"no parquet files under {source}")
    return len(files)


def _stored(p: DrillPlatform, client: Any, since: datetime) -> dict[str, Any]:
    """What must survive the incident: the model's versions and its logged predictions."""
    from mlre import prediction_log

    model = p.settings.model_name
    versions = {str(v.version) for v in client.search_model_versions(f"name='{model}'")}
    logged = prediction_log.read_predictions(
        p.settings.prediction_log_root, model, since, datetime.now(UTC)
    )
    return {"versions": versions, "predictions": len(logged)}

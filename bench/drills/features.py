"""Feature drills: the freshness and consistency loops of slos/features.yaml.

- stale-feature-view: the hourly materialization stopped 30 hours ago while the source data kept
  landing. The daily view's freshness SLO pages; `remediate/backfill-features` catches the view
  up from where it stopped to now; the freshness SLI recovers and the page resolves.
- corrupted-online-row: wrong values written over 5 % of a view's online rows. The consistency
  check finds them and its SLO pages; `remediate/repair-consistency` re-materializes the compared
  window and re-checks; the mismatch SLI recovers and every corrupted row holds its value again.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.drills.platform import DrillPlatform, DrillResult, follow, landed
from mlre import slis
from mlre.settings import Settings


def stale_feature_view(p: DrillPlatform, view: str = "customer_daily_stats_fv") -> DrillResult:
    """Materialization stopped 30 h ago while data kept landing -> freshness page -> backfill."""
    from mlre.features.store import open_store

    result = DrillResult(
        "stale-feature-view",
        f"{view} last materialized 30 h ago (the schedule stopped), source data up to now",
        "FeatureFreshnessBudgetBurn (page)",
    )
    landed(p)
    p.echo("materializing it up to 30 hours ago ...")
    stopped = datetime.now(UTC) - timedelta(hours=30)
    p.mlre("materialize", "--end", stopped.isoformat(), "--feature-view", view)
    store = open_store(p.settings)
    newest = store.get_feature_view(view, allow_registry_cache=False).most_recent_end_time
    keys_before = online_keys(p.settings, view)
    # What that last run pushed when it ran: the view's freshness as of then. (A run that ends
    # in the past publishes no freshness: flows/materialize.py.)
    pushed = slis.push(
        p.settings.pushgateway_endpoint,
        [slis.materialization("materialize-features", view, succeeded=True, newest_event=newest)],
    )
    assert pushed, "the Pushgateway refused the watermark"
    began = time.monotonic()
    p.echo(f"{view} is {(datetime.now(UTC) - newest).total_seconds() / 3600:.1f} h old; waiting")
    fresh = f'time() - mlre_feature_newest_event_timestamp_seconds{{feature_view="{view}"}} < 93600'
    follow(p, result, alert="FeatureFreshnessBudgetBurn", action="backfill-features",
           labels={"feature_view": view}, healthy=fresh, began=began)  # fmt: skip
    keys_after = online_keys(p.settings, view)
    result.nothing_lost = keys_before <= keys_after
    result.notes.append(f"online entity keys of {view}: {len(keys_before)} -> {len(keys_after)}")
    return result


def corrupted_online_row(
    p: DrillPlatform,
    view: str = "customer_daily_stats_fv",
    feature: str = "avg_amount_30d",
    share: float = 0.05,
) -> DrillResult:
    """Wrong values in the online store -> consistency check -> page -> repair-consistency."""
    result = DrillResult(
        "corrupted-online-row",
        f"{feature} overwritten with wrong values in {share:.0%} of {view}'s online rows",
        "FeatureConsistencyBudgetBurn (page)",
    )
    landed(p)
    p.mlre("materialize", "--feature-view", view)
    keys_before = online_keys(p.settings, view)
    corrupted = _corrupt(p.settings, view, feature, share)
    began = time.monotonic()  # the alert's delay includes the check that finds the rows
    p.echo(f"corrupted {len(corrupted)} online rows; the consistency check finds them ...")
    checked = p.mlre("check-consistency", "--feature-view", view, expect_failure=True)
    result.notes.append(checked.strip().splitlines()[-1][:200] if checked.strip() else "")
    consistent = f'max(mlre_feature_mismatch_ratio{{feature_view="{view}"}}) <= 0.001'
    follow(p, result, alert="FeatureConsistencyBudgetBurn", action="repair-consistency",
           labels={"feature_view": view}, healthy=consistent, began=began)  # fmt: skip
    still_wrong = corrupted & _values(p.settings, view, feature, corrupted).items()
    result.nothing_lost = keys_before <= online_keys(p.settings, view) and not still_wrong
    result.notes.append(f"{len(still_wrong)} of {len(corrupted)} corrupted rows still wrong")
    return result


def _online_db(settings: Settings) -> Any:
    import sqlite3

    return contextlib.closing(sqlite3.connect(settings.data_dir / "online_store.db"))


def _corrupt(settings: Settings, view: str, feature: str, share: float) -> set[tuple[str, float]]:
    """Add 1,000 to `feature` in every 1/share-th online row of the view; (key, wrong value)."""
    from feast.protos.feast.types.Value_pb2 import Value

    table = f"fraud_detection_{view}"
    done: set[tuple[str, float]] = set()
    with _online_db(settings) as db, db:
        rows = db.execute(
            f'SELECT entity_key, value FROM "{table}" WHERE feature_name = ? ORDER BY entity_key',
            (feature,),
        ).fetchall()
        for key, blob in rows[:: max(int(1 / share), 1)]:
            value = Value.FromString(blob)
            value.double_val += 1000.0
            db.execute(
                f'UPDATE "{table}" SET value = ? WHERE entity_key = ? AND feature_name = ?',
                (value.SerializeToString(), key, feature),
            )
            done.add((key.hex(), value.double_val))
    return done


def _values(
    settings: Settings, view: str, feature: str, keys: set[tuple[str, float]]
) -> dict[str, float]:
    """The feature's online value now for the given (hex) entity keys."""
    from feast.protos.feast.types.Value_pb2 import Value

    with _online_db(settings) as db:
        return {
            key: Value.FromString(db.execute(
                f'SELECT value FROM "fraud_detection_{view}" WHERE entity_key = ? '
                "AND feature_name = ?", (bytes.fromhex(key), feature),
            ).fetchone()[0]).double_val
            for key, _ in keys
        }  # fmt: skip


def online_keys(settings: Settings, view: str) -> set[str]:
    """Entity keys (hex) the SQLite online store holds for a view (local profile)."""
    with _online_db(settings) as db:
        rows = db.execute(f'SELECT DISTINCT entity_key FROM "fraud_detection_{view}"').fetchall()
    return {row[0].hex() for row in rows}

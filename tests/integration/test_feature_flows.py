"""The feature flows through a real Prefect server (test harness): artifacts, failures, no harm."""

from __future__ import annotations

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.materialize import MaterializeParams, materialize_features
from mlre.data.generator import write_source
from mlre.features.consistency import read_online
from mlre.settings import get_settings
from tests.integration.conftest import recent_config
from tests.support.skew import overwrite_online_values

pytestmark = pytest.mark.integration
VIEW = "customer_daily_stats_fv"


@pytest.fixture(params=["local", "production"])
def flow_env(request, make_feature_env, monkeypatch, prefect_harness):
    """A fresh store whose settings the flows pick up from the environment."""
    env = make_feature_env(request.param, config=recent_config())
    monkeypatch.setenv("MLRE_HOME", str(env.settings.home))
    monkeypatch.setenv("MLRE_STORE_PROFILE", request.param)
    monkeypatch.setenv("MLRE_REDIS_CONNECTION_STRING", env.settings.redis_connection_string)
    monkeypatch.setenv("MLRE_REGISTRY_URI", env.settings.registry_uri)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


def _artifacts(state) -> dict[str, object]:
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {a.key: a for a in found}


def _snapshot(env) -> pd.DataFrame:
    store = env.reopen()
    keys = pd.DataFrame({"customer_id": env.config.customer_ids})
    return read_online(store, store.get_feature_view(VIEW), keys)


def test_materialize_then_consistency_pass_with_artifacts(flow_env) -> None:
    state = materialize_features(MaterializeParams(partitions=3), return_state=True)
    assert state.is_completed(), state.message
    results = state.result()
    daily = [r for r in results if r.feature_view == VIEW]
    assert sum(r.keys for r in daily) == flow_env.config.n_customers
    assert {"materialization-partitions", "freshness-watermark"} <= set(_artifacts(state))

    check = validate_feature_consistency(ConsistencyParams(sample_size=200), return_state=True)
    assert check.is_completed(), check.message
    decision = check.result()
    assert decision.consistent
    assert decision.mismatch_rate == 0.0
    assert "feature-consistency" in _artifacts(check)

    again = materialize_features(MaterializeParams(partitions=3), return_state=True)
    assert sum(r.keys for r in again.result()) == 0  # incremental: nothing new since last run


def test_consistency_flow_fails_on_skew_and_says_where(flow_env) -> None:
    assert materialize_features(MaterializeParams(), return_state=True).is_completed()
    store = flow_env.reopen()
    current = _snapshot(flow_env)
    skewed = [int(k) for k in flow_env.config.customer_ids[:4]]
    overwrite_online_values(store, VIEW, current, "avg_amount_30d", skewed)

    state = validate_feature_consistency(
        ConsistencyParams(feature_views=[VIEW], sample_size=1_000), return_state=True
    )
    assert state.is_failed()
    message = str(state.message) + str(state.result(raise_on_failure=False))
    assert "avg_amount_30d" in message
    assert str(skewed[0]) in message
    assert "feature-consistency" in _artifacts(state)


def test_bad_source_data_never_reaches_the_online_store(flow_env) -> None:
    assert materialize_features(MaterializeParams(), return_state=True).is_completed()
    before = _snapshot(flow_env)
    folder = flow_env.settings.lake_dir / "sources" / "customer_daily_stats"
    bad = pd.read_parquet(folder).tail(5).copy()
    bad["event_timestamp"] = bad["event_timestamp"] + pd.Timedelta(days=1)
    bad["created"] = bad["event_timestamp"]
    bad["txn_amount_sum_1d"] = 99_999.0
    bad.loc[bad.index[:2], "customer_id"] = None
    write_source(bad, folder / "late", partition_by_day=False)

    state = materialize_features(MaterializeParams(), return_state=True)

    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "customer_id" in message
    assert "part-all.parquet" in message
    pd.testing.assert_frame_equal(before, _snapshot(flow_env))

"""Three processes materialize overlapping windows into one store (SQLite, and Redis + PostgreSQL).

The order is forced, not hoped for: every process opens its store first; the one with the newest
window writes and records its interval; then the two older, overlapping windows race each other
over it. Whatever lands last, the online store must equal one materialization of the union window
(newest row per key), the watermark must be the union's end, and the consistency check must pass.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from mlre.features import consistency as checks
from mlre.features import materialize as engine
from mlre.features.consistency import read_online
from mlre.features.store import open_store
from mlre.settings import Settings
from tests.integration.conftest import FeatureEnv, build_feature_env, recent_config
from tests.reliability.harness import StateChanged, assert_same
from tests.support.child import finish_child, start_child

pytestmark = pytest.mark.integration
CONFIG = recent_config(days=6, n_customers=400)
VIEWS = ("customer_daily_stats_fv", "customer_hourly_stats_fv")
DAY = timedelta(days=1)
UNION = engine.Window(CONFIG.start, CONFIG.end)
WINDOWS = {
    "newest": engine.Window(CONFIG.start + 3 * DAY, CONFIG.end),
    "oldest": engine.Window(CONFIG.start, CONFIG.start + 2 * DAY),
    "middle": engine.Window(CONFIG.start + DAY, CONFIG.end - DAY),
}
TARGET = "tests.reliability.test_concurrency:materialize_when_told"
# Small batches: the racing processes interleave many writes of the same keys.
BATCH_ROWS = 40


@pytest.fixture(scope="module", autouse=True)
def platform_exported() -> None:
    """This module builds its own stores, not the bad-input corpus' platform (conftest's)."""


def materialize_when_told(settings: Settings, window: engine.Window) -> None:
    """Child process: open the store, say ready, wait for go, materialize every view."""
    store = open_store(settings)
    views = [store.get_feature_view(name) for name in VIEWS]
    print("ready", flush=True)
    sys.stdin.readline()
    for view in views:
        engine.materialize_view(store, view, window, partitions=2, batch_rows=BATCH_ROWS)


def _go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def _wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == "ready":
            return
    raise AssertionError(f"child exited before it was ready: {child.communicate()[1]}")


def _race(settings: Settings, workdir: Path) -> None:
    """Newest window first, then the two older ones at once; every child must succeed."""
    children = {
        name: start_child(TARGET, {"settings": settings, "window": window}, workdir / name)
        for name, window in WINDOWS.items()
    }
    try:
        for child in children.values():
            _wait_ready(child)
        _go(children["newest"])
        outcomes = [finish_child(children["newest"])]
        _go(children["oldest"])
        _go(children["middle"])
        outcomes += [finish_child(children[name]) for name in ("oldest", "middle")]
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
    failed = [(o.error_type, o.message, o.stderr[-2000:]) for o in outcomes if o.error_type]
    assert not failed, failed


def _online(env: FeatureEnv, view: str) -> pd.DataFrame:
    store = env.reopen()
    keys = pd.DataFrame({"customer_id": env.config.customer_ids.astype("int64")})
    return read_online(store, store.get_feature_view(view), keys)


def _assert_same_online(raced: FeatureEnv, single: FeatureEnv) -> None:
    """Every key's online row (values and event time) as one run over the union wrote it."""
    for view in VIEWS:
        try:
            pd.testing.assert_frame_equal(_online(raced, view), _online(single, view))
        except AssertionError as exc:
            raise StateChanged(
                f"online values of {view!r} differ from one run over the union window: {exc}"
            ) from exc


def _single_run(env: FeatureEnv) -> None:
    store = env.reopen()
    for view in VIEWS:
        engine.materialize_view(store, store.get_feature_view(view), UNION, partitions=2)


@pytest.mark.fault("3 concurrent overlapping materializations")
@pytest.mark.parametrize("profile", ["local", "production"])
def test_racing_overlapping_materializations_equal_one_run(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    profile: str,
) -> None:
    raced = build_feature_env(tmp_path_factory, profile, CONFIG, request)
    single = build_feature_env(tmp_path_factory, profile, CONFIG, request)

    _race(raced.settings, tmp_path)
    _single_run(single)

    _assert_same_online(raced, single)
    store = raced.reopen()
    views = [store.get_feature_view(name, allow_registry_cache=False) for name in VIEWS]
    watermarks = {view.name: view.most_recent_end_time for view in views}
    assert_same("watermark of", dict.fromkeys(VIEWS, UNION.end), watermarks)
    reports = [
        checks.check_view(
            store, view, engine.view_spec(store, view), sample_size=10_000, seed=0, tolerance=1e-9
        )
        for view in views
    ]
    decision = checks.decide(reports, max_mismatch_rate=0.0)
    assert decision.consistent, decision.reasons

"""Redis restarted during a materialization, PostgreSQL gone during `feast apply` (production
profile: Redis online store, SQL registry on PostgreSQL).

The module owns its Redis and PostgreSQL (they override the session's servers, which other tests
read), so a crash here hurts nobody else. Faults land at exact steps through hooks around the real
calls: between two online-store write batches, and just before the registry's first write.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from feast.infra.registry.sql import SqlRegistry

import flows.materialize
from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.materialize import MaterializeParams, materialize_features
from mlre.errors import ConsistencyError, ServiceUnavailableError
from mlre.features import materialize as engine
from mlre.features.store import apply_repo, open_store
from mlre.settings import PROJECT_ROOT
from tests.integration.conftest import FeatureEnv, build_feature_env, recent_config
from tests.reliability.conftest import exported
from tests.reliability.harness import assert_message, assert_same
from tests.support.faults import inject
from tests.support.servers import PostgresServer, RedisServer, run_dir, running

pytestmark = pytest.mark.integration
CONFIG = recent_config(days=6, n_customers=400)
# Enough keys to compare every one of them: a lost key cannot hide outside the sample.
EVERY_KEY = ConsistencyParams(sample_size=10_000, max_mismatch_rate=0.0)


@pytest.fixture(scope="module")
def redis_server(servers_root: Path) -> Iterator[RedisServer]:
    """This module's own Redis (overrides the session's): the fault restarts it empty."""
    with running(RedisServer(data_dir=run_dir(servers_root) / "redis-faults")) as server:
        yield server


@pytest.fixture(scope="module")
def postgres_server(servers_root: Path) -> Iterator[PostgresServer]:
    """This module's own PostgreSQL (overrides the session's): the fault crashes it."""
    with running(PostgresServer(data_dir=run_dir(servers_root) / "postgres-faults")) as server:
        yield server


@pytest.fixture(autouse=True)
def servers_back_up(redis_server: RedisServer, postgres_server: PostgresServer) -> Iterator[None]:
    """Servers run again after each test, even one that failed before its recovery step."""
    yield
    if not redis_server.running:
        redis_server.start()
    if postgres_server.handle is None:
        postgres_server.start()


@pytest.fixture
def production(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
) -> Iterator[FeatureEnv]:
    """A fresh applied production store on this module's servers, exported for the flows."""
    env = build_feature_env(tmp_path_factory, "production", CONFIG, request)
    settings = env.settings
    with exported(
        {
            "MLRE_HOME": str(settings.home),
            "MLRE_STORE_PROFILE": "production",
            "MLRE_REDIS_CONNECTION_STRING": settings.redis_connection_string,
            "MLRE_REGISTRY_URI": settings.registry_uri,
        }
    ):
        yield env


def _crash_and_restart(server: RedisServer) -> None:
    """kill -9, then a fresh redis-server on the same port: everything written so far is gone."""
    server.kill()
    server.start()


@pytest.mark.fault("Redis restarted during materialization")
def test_redis_restart_between_batches_is_caught_and_a_backfill_converges(
    production: FeatureEnv, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = flows.materialize.materialize_partition
    monkeypatch.setattr(
        flows.materialize, "materialize_partition", task.with_options(retry_delay_seconds=0)
    )
    # Two write batches of the first view (customer_daily_stats_fv) land, then Redis comes back
    # empty; DuckDB may cut a partition into more than one batch, so the total varies.
    restarted = inject(
        monkeypatch, engine, "write_batch", lambda: _crash_and_restart(redis_server), at=2
    )

    materialize_features(MaterializeParams(partitions=4))

    assert restarted.fired
    assert restarted.calls > 2  # the run went on writing after the restart
    with pytest.raises(ConsistencyError) as caught:
        validate_feature_consistency(EVERY_KEY)
    assert_message(
        caught.value, names=["customer_daily_stats_fv", "missing online"], fix="backfill"
    )

    backfill = MaterializeParams(
        mode="backfill", start=CONFIG.start, end=datetime.now(UTC), partitions=4
    )
    materialize_features(backfill)
    decision = validate_feature_consistency(EVERY_KEY)
    assert decision.consistent, decision.reasons
    assert decision.mismatch_rate == 0.0


def _registry_rows(registry_uri: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of the SQL registry, in a stable order."""
    url = registry_uri.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
        return {
            table: connection.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
            for (table,) in tables
        }


def _changed_repo(tmp_path: Path) -> Path:
    """The project's feature repo with one definition changed (the entity's description)."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo)
    definitions = repo / "definitions.py"
    text = definitions.read_text()
    assert 'description="A card holder (customer_id).",' in text
    definitions.write_text(text.replace("A card holder", "A card holder, changed"))
    return repo


@pytest.mark.fault("PostgreSQL down during feast apply")
def test_postgres_down_during_apply_fails_clearly_and_the_registry_is_intact(
    production: FeatureEnv,
    postgres_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = production.settings
    repo = _changed_repo(tmp_path)
    before = _registry_rows(settings.registry_uri)
    # The diff is planned against the live registry; the server dies as the first write starts.
    crashed = inject(monkeypatch, SqlRegistry, "_apply_object", postgres_server.kill, after=False)

    with pytest.raises(ServiceUnavailableError) as caught:
        apply_repo(open_store(settings, repo), repo, settings)

    assert crashed.fired
    assert type(caught.value) is ServiceUnavailableError
    database = settings.registry_uri.rsplit("/", 1)[1].split("?")[0]
    assert_message(caught.value, names=["Feast registry", database, str(repo)], fix="re-run")
    postgres_server.start()  # crash recovery replays the WAL; same socket, same URI
    assert_same("registry table", before, _registry_rows(settings.registry_uri))

    apply_repo(open_store(settings, repo), repo, settings)
    entity = open_store(settings, repo).get_entity("customer")
    assert entity.description == "A card holder, changed (customer_id)."

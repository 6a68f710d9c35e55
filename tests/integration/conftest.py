"""Integration fixtures: throwaway Feast stores (SQLite; Redis + PostgreSQL), a Prefect harness."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg
import pytest
import redis
from feast import FeatureStore

from mlre.data.generator import GeneratorConfig, generate_sources, write_sources
from mlre.features.consistency import read_online
from mlre.features.store import apply_repo, open_store
from mlre.settings import Settings

_REDIS_DBS = itertools.count(1)
SMALL = GeneratorConfig(n_customers=400, start=datetime(2026, 1, 1, tzinfo=UTC), days=6, seed=11)


# The clock of the tests that inject one (flow parameter `now`, `now=` / `predicted_at=` of the
# core): mid-morning, so no window or partition day sits on a midnight, and a fixed date, so the
# generated data (weekly seasonality follows the start's weekday) are the same every day.
NOW = datetime(2026, 3, 18, 9, 30, tzinfo=UTC)


def recent_config(
    days: int = 6, n_customers: int = 400, *, now: datetime | None = None
) -> GeneratorConfig:
    """A small data set whose newest rows are from the midnight before `now`, so they are fresh
    then. Default: the real clock, for code under test that reads it; tests that pass `now` down
    to that code pass NOW here too and get the same data whatever day they run."""
    today = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    return GeneratorConfig(
        n_customers=n_customers, start=today - timedelta(days=days), days=days, seed=11
    )


@dataclass
class FeatureEnv:
    """A private home with generated sources and an applied store of one profile."""

    settings: Settings
    store: FeatureStore
    config: GeneratorConfig

    def reopen(self) -> FeatureStore:
        return open_store(self.settings)

    def online_rows(self, view: str) -> pd.DataFrame:
        """Every generated customer's online row of `view` (values and event time)."""
        store = self.reopen()
        keys = pd.DataFrame({"customer_id": self.config.customer_ids.astype("int64")})
        return read_online(store, store.get_feature_view(view), keys)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (7-8 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def _fresh_database(admin_url: str) -> str:
    """A new, empty PostgreSQL database so each store has its own SQL registry."""
    name = f"feast_{uuid.uuid4().hex[:10]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def build_feature_env(
    tmp_path_factory: pytest.TempPathFactory,
    profile: str = "local",
    config: GeneratorConfig = SMALL,
    request: pytest.FixtureRequest | None = None,
) -> FeatureEnv:
    """A private home with generated sources and an applied store of `profile`."""
    home = tmp_path_factory.mktemp(f"home-{profile}")
    overrides: dict[str, object] = {"home": home, "store_profile": profile}
    if profile == "production":
        assert request is not None, "the production profile needs the server fixtures"
        redis_server = request.getfixturevalue("redis_server")
        postgres = request.getfixturevalue("postgres_server")
        db = next(_REDIS_DBS) % 16
        redis.Redis(host=redis_server.host, port=redis_server.port, db=db).flushdb()
        overrides["redis_connection_string"] = f"{redis_server.connection_string},db={db}"
        overrides["registry_uri"] = _fresh_database(postgres.sqlalchemy_url)
    settings = Settings(**overrides)
    settings.ensure_dirs()
    write_sources(generate_sources(config), settings.lake_dir)
    store = open_store(settings)
    apply_repo(store, settings.feature_repo, settings)
    return FeatureEnv(settings=settings, store=store, config=config)


@pytest.fixture
def make_feature_env(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[..., FeatureEnv]:
    """Factory: `make_feature_env("local" | "production", config=...)` builds a fresh store."""

    def build(profile: str = "local", config: GeneratorConfig = SMALL) -> FeatureEnv:
        return build_feature_env(tmp_path_factory, profile, config, request)

    return build


# --- MLflow (appended: imports kept with the fixture so the block above stays untouched) ---
from pathlib import Path  # noqa: E402

from tests.support.mlflow_server import MlflowServer, start_mlflow  # noqa: E402


@pytest.fixture(scope="session")
def mlflow_server(servers_root: Path) -> Iterator[MlflowServer]:
    """A real, lean MLflow server (`tracking_uri`, `kill()`, `restart()`), SQLite-backed."""
    server = start_mlflow(servers_root)
    try:
        yield server
    finally:
        server.stop()

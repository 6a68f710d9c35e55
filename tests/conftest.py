"""Session fixtures: a private platform home and real Redis / PostgreSQL servers the run owns."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlre.settings import PROJECT_ROOT, apply_runtime_env, get_settings
from tests.support.servers import (
    PostgresServer,
    RedisServer,
    prune_stale_runs,
    run_dir,
    start_postgres,
    start_redis,
)

# The reliability summary counts corpus cases and fault-marked tests wherever they live, so it is
# registered once, here, for the whole tree (`make reliability` runs it with --reliability).
pytest_plugins = ["tests.reliability.summary"]

# MLRE_TEST_HOME lets two test runs share a checkout (each its own stores, lake and locks).
TEST_HOME = Path(os.environ.get("MLRE_TEST_HOME") or PROJECT_ROOT / ".mlre" / "test-home")
SERVERS_ROOT = PROJECT_ROOT / ".mlre" / "test-servers"
_SAVED_ENV: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Export the test home's environment before test modules (and what they import) load."""
    _SAVED_ENV.update(os.environ)
    _keep_prometheus_in_memory()
    os.environ["MLRE_HOME"] = str(TEST_HOME)
    # Flows run in-process push their SLIs only where a test starts its own Pushgateway (and
    # says so); never to a person's monitoring stack on the default ports.
    os.environ["MLRE_MONITORING"] = "false"
    get_settings.cache_clear()
    apply_runtime_env(get_settings())


def _keep_prometheus_in_memory() -> None:
    """Several prediction-service apps live in this one process, each with its own metrics
    registry. Feast's import (here via a plugin, before this hook) switches prometheus_client to
    its multiprocess mode, where same-named metrics of every app share one value and test order
    decides what a test reads. Metrics created from now on keep per-registry values in memory,
    as in `python -m serving`, which decides before anything imports Feast."""
    from prometheus_client import values

    values.ValueClass = values.MutexValue


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give the process its environment back."""
    if _SAVED_ENV:
        os.environ.clear()
        os.environ.update(_SAVED_ENV)
    get_settings.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def mlre_test_env() -> Path:
    """Settings point at `.mlre/test-home` (re-applied in case a test reset them)."""
    os.environ["MLRE_HOME"] = str(TEST_HOME)
    get_settings.cache_clear()
    apply_runtime_env(get_settings())
    return TEST_HOME


@pytest.fixture(scope="session")
def servers_root(mlre_test_env: Path) -> Iterator[Path]:
    """Where this run's servers keep their data; leftovers of dead runs are stopped first."""
    prune_stale_runs(SERVERS_ROOT)
    yield SERVERS_ROOT
    # Runs after the server fixtures' teardown (they depend on this one).
    shutil.rmtree(run_dir(SERVERS_ROOT), ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(servers_root: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port (`connection_string`, `restart()`)."""
    server = start_redis(servers_root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(servers_root: Path) -> Iterator[PostgresServer]:
    """A real PostgreSQL (`sqlalchemy_url` is `postgresql+psycopg://...`)."""
    server = start_postgres(servers_root)
    try:
        yield server
    finally:
        server.stop()

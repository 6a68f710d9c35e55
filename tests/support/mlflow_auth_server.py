"""A real MLflow server with basic-auth on (`--app-name basic-auth`), configured like the cloud's:
the auth ini comes from infra/mlflow_service.py (READ by default, `admin` as the admin user),
users in their own SQLite database, a generated admin password and CSRF key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from infra.mlflow_service import ADMIN_USER, auth_ini
from tests.support.mlflow_server import MlflowServer
from tests.support.servers import run_dir

# The auth app loads more than the plain server (Flask-WTF, its own migrations): slower to start.
READY_TIMEOUT_S = 180.0


@dataclass
class BasicAuthMlflowServer(MlflowServer):
    """`mlflow server --app-name basic-auth`; `admin_username`/`admin_password` act as admin."""

    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    admin_username: ClassVar[str] = ADMIN_USER
    ready_timeout_s: ClassVar[float] = READY_TIMEOUT_S

    @property
    def auth_config_path(self) -> Path:
        return self.data_dir / "basic_auth.ini"

    def argv(self) -> list[str]:
        return [*super().argv(), "--app-name", "basic-auth"]

    def env(self) -> dict[str, str]:
        """The plain server's environment plus the auth config, admin password and CSRF key."""
        return {
            **super().env(),
            "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config_path),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-key",
        }

    def start(self) -> None:
        """Write the auth ini (users in `auth.db` next to the tracking data), then start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        users_db = f"sqlite:///{(self.data_dir / 'auth.db').resolve()}"
        self.auth_config_path.write_text(auth_ini(users_db))
        super().start()


def start_basic_auth_mlflow(root: Path) -> BasicAuthMlflowServer:
    """A started basic-auth MLflow server in `root`'s run folder."""
    server = BasicAuthMlflowServer(data_dir=run_dir(root) / "mlflow-basic-auth")
    server.start()
    return server

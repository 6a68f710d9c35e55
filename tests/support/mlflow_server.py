"""A real, lean MLflow tracking server for the test session, on a free port, stopped by PID.

`mlflow server` forks a uvicorn worker, so it runs in its own session and is stopped as a process
group (SIGTERM, then SIGKILL). Data (SQLite backend, artifacts) lives under the run folder of
`.mlre/test-servers/`, so a `restart()` keeps registered models and a `kill()` simulates a crash.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tests.support.servers import SupervisedServer, run_dir

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def _mlflow_bin() -> str:
    """The venv's own `mlflow` entry point (next to the running interpreter)."""
    return str(Path(sys.executable).parent / "mlflow")


@dataclass
class MlflowServer(SupervisedServer):
    """`mlflow server` with a SQLite backend; a `restart()` keeps registered models."""

    ready_timeout_s: ClassVar[float] = READY_TIMEOUT_S
    stop_timeout_s: ClassVar[float] = STOP_TIMEOUT_S

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return (self.data_dir / "mlflow.db").resolve()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mlflow.log"

    def argv(self) -> list[str]:
        """One worker, uploads proxied through the server (clients see `mlflow-artifacts:/`)."""
        return [
            _mlflow_bin(), "server",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.db_path}",
            "--artifacts-destination", str((self.data_dir / "artifacts").resolve()),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """The session's environment, minus the job runner (18 s and ~2 GB when on)."""
        return {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
        }

    def healthy(self) -> bool:
        """One GET /health without retries."""
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


def start_mlflow(root: Path) -> MlflowServer:
    """A started MLflow server in `root`'s run folder."""
    server = MlflowServer(data_dir=run_dir(root) / "mlflow")
    server.start()
    return server

"""A real, lean MLflow tracking server for the test session, on a free port, stopped by PID.

`mlflow server` forks a uvicorn worker, so it runs in its own session and is stopped as a process
group (SIGTERM, then SIGKILL). Data (SQLite backend, artifacts) lives under the run folder of
`.mlre/test-servers/`, so a `restart()` keeps registered models and a `kill()` simulates a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mlre import supervisor
from mlre.supervisor import free_port
from tests.support.servers import record_pid, run_dir

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def _mlflow_bin() -> str:
    """The venv's own `mlflow` entry point (next to the running interpreter)."""
    return str(Path(sys.executable).parent / "mlflow")


@dataclass
class MlflowServer:
    """`mlflow server` with a SQLite backend; `tracking_uri`, `kill()`, `restart()`."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    started_in_s: float = 0.0

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

    def start(self) -> None:
        """Start the server and wait until `/health` answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        offset = supervisor.log_offset(self.log_path)
        self.process = supervisor.spawn(self.argv(), log_path=self.log_path, env=self.env())
        record_pid(self.data_dir.parent, self.data_dir.name, self.process.pid)
        process = self.process
        try:
            supervisor.wait_healthy(
                f"mlflow server on {self.port}",
                self.healthy,
                alive=lambda: process.poll() is None,
                timeout_s=READY_TIMEOUT_S,
                log_path=self.log_path,
                offset=offset,
            )
        except Exception:
            self.stop(signal.SIGKILL)
            raise
        self.started_in_s = time.monotonic() - began

    def healthy(self) -> bool:
        """One GET /health without retries."""
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the whole process group (the uvicorn worker too), SIGKILL after a grace period."""
        supervisor.stop_popen(self.process, STOP_TIMEOUT_S, sig)
        self.process = None

    def kill(self) -> None:
        """Crash the server the hard way (fault injection); data on disk stays."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_mlflow(root: Path) -> MlflowServer:
    """A started MLflow server in `root`'s run folder."""
    server = MlflowServer(data_dir=run_dir(root) / "mlflow")
    server.start()
    return server

"""A real, lean MLflow tracking server for the test session, on a free port, stopped by PID.

`mlflow server` forks a uvicorn worker, so it runs in its own session and is stopped as a process
group (SIGTERM, then SIGKILL). Data (SQLite backend, artifacts) lives under the run folder of
`.mlre/test-servers/`, so a `restart()` keeps registered models and a `kill()` simulates a crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.servers import _record_pid, _tail, free_port, run_dir

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
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )
        _record_pid(self.data_dir.parent, self.data_dir.name, self.process.pid)
        self._wait_ready()
        self.started_in_s = time.monotonic() - began

    def healthy(self) -> bool:
        """One GET /health without retries."""
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        """Poll /health; fail with the log tail if the server exits or never answers."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server on {self.port} exited:\n{_tail(self.log_path)}")
            if self.healthy():
                return
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"mlflow server on {self.port} not ready:\n{_tail(self.log_path)}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the whole process group (the uvicorn worker too), SIGKILL after a grace period."""
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        members = _group_members(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        _, alive = psutil.wait_procs(members, timeout=STOP_TIMEOUT_S)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        self.process.wait(STOP_TIMEOUT_S)
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


def _group_members(pid: int) -> list[psutil.Process]:
    """The server and every process it forked."""
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def start_mlflow(root: Path) -> MlflowServer:
    """A started MLflow server in `root`'s run folder."""
    server = MlflowServer(data_dir=run_dir(root) / "mlflow")
    server.start()
    return server

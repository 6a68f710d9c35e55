"""`python -m serving` as a real process for tests: its environment, readiness, stop and output.

The process gets its own session, so cleanup can end its whole process group: with
MLRE_SERVING_WORKERS > 1 uvicorn's supervisor has worker children that would outlive a killed
parent (and keep answering on its port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from mlre.settings import PROJECT_ROOT, Settings
from mlre.supervisor import free_port
from mlre.waiting import wait_until

READY_TIMEOUT_S = 90.0  # imports, the first registry read and model load on a loaded machine
# Nothing is written before SIGTERM: the shutdown flush has to write every row.
HOLD_THE_LOG = {
    "MLRE_SERVING_LOG_FLUSH_INTERVAL_S": "3600",
    "MLRE_SERVING_LOG_FLUSH_ROWS": "1000000",
}


def serving_env(
    settings: Settings, tracking_uri: str, model_name: str, **overrides: str
) -> dict[str, str]:
    """The service's environment: the test's home and MLflow, a free port, `overrides` last."""
    return {
        **os.environ,
        "MLRE_HOME": str(settings.home),
        "MLRE_MLFLOW_URI": tracking_uri,
        "MLRE_MODEL_NAME": model_name,
        "MLRE_SERVING_PORT": str(free_port()),
        # The subjects are shutdown and workers, not latency: a loaded CI machine must not turn a
        # slow online read into a rule fallback (model_version "rule") and fail version checks.
        "MLRE_SERVING_FEATURE_TIMEOUT_S": "30",
        # As in production: the service refuses MLflow's pickle loading (python -m serving).
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        **overrides,
    }


@dataclass(frozen=True)
class ServingProcess:
    """A started `python -m serving`: its parent process, URL and combined output file."""

    proc: subprocess.Popen
    url: str
    output_file: Path

    def output(self) -> str:
        return self.output_file.read_text(errors="replace")

    def _answers_ready(self) -> bool:
        assert self.proc.poll() is None, f"the service exited early:\n{self.output()[-4000:]}"
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        wait_until(
            self._answers_ready, timeout_s=timeout_s, what="service readiness", interval_s=0.1
        )

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM to the parent (what Kubernetes sends PID 1); its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)


@contextlib.contextmanager
def serving_process(env: dict[str, str], output_file: Path) -> Iterator[ServingProcess]:
    """Start `python -m serving` with `env`; whatever is left of its process group is killed
    on exit."""
    with output_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pgid is proc.pid
        )
    try:
        yield ServingProcess(proc, f"http://127.0.0.1:{env['MLRE_SERVING_PORT']}", output_file)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

"""A private local platform (`mlre up` in its own home, on free ports) for e2e and fault tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlre import local_platform
from mlre.settings import PROJECT_ROOT, Settings
from mlre.supervisor import free_port

MLRE = str(Path(sys.executable).parent / "mlre")
# Bounds a hung command, not its speed: `mlre demo` (five servers up, eleven deployments, the
# whole pipeline through a worker) took 60-190 s on a shared 2-core machine.
COMMAND_TIMEOUT_S = 360


@dataclass
class PrivatePlatform:
    """A platform home and ports no other test or person uses."""

    home: Path
    prefect_port: int
    mlflow_port: int
    # The monitoring stack `mlre up` starts too (never the default 9090/9093/9091 of a person's).
    prometheus_port: int = field(default_factory=free_port)
    alertmanager_port: int = field(default_factory=free_port)
    pushgateway_port: int = field(default_factory=free_port)
    relay_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MLRE_HOME": str(self.home),
            "MLRE_PREFECT_PORT": str(self.prefect_port),
            "MLRE_MLFLOW_PORT": str(self.mlflow_port),
            "MLRE_PROMETHEUS_PORT": str(self.prometheus_port),
            "MLRE_ALERTMANAGER_PORT": str(self.alertmanager_port),
            "MLRE_PUSHGATEWAY_PORT": str(self.pushgateway_port),
            "MLRE_RELAY_PORT": str(self.relay_port),
            "MLRE_MONITORING": "true",
            "MLRE_HEALTH_TIMEOUT_S": "120",
        }

    @property
    def settings(self) -> Settings:
        return Settings(
            home=self.home,
            prefect_port=self.prefect_port,
            mlflow_port=self.mlflow_port,
            prometheus_port=self.prometheus_port,
            alertmanager_port=self.alertmanager_port,
            pushgateway_port=self.pushgateway_port,
            relay_port=self.relay_port,
            monitoring=True,
        )

    def mlre(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the installed console script; a timeout fails the test instead of hanging it."""
        return subprocess.run(
            [MLRE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def pids(self) -> dict[str, int]:
        """PID of each recorded process, from the PID files."""
        run = self.home / "run"
        return {p.stem: json.loads(p.read_text())["pid"] for p in run.glob("*.pid")}


@contextmanager
def private_platform_home(prefix: str = "e2e") -> Iterator[PrivatePlatform]:
    """A fresh home under `.mlre/`; whatever runs from it at the end is stopped by PID."""
    home = PROJECT_ROOT / ".mlre" / f"{prefix}-{uuid.uuid4().hex[:8]}"
    plat = PrivatePlatform(home=home, prefect_port=free_port(), mlflow_port=free_port())
    try:
        yield plat
    finally:
        local_platform.down(plat.settings)
        shutil.rmtree(home, ignore_errors=True)

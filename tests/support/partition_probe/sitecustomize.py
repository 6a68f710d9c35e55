"""Interpreter start-up hook for the child processes of tests/integration/test_resume.py only
(their PYTHONPATH names this folder; Python imports `sitecustomize` from it at start-up).

Armed by `MLRE_TEST_PARTITION_LOG` (a file): every partition the materialization engine really
runs appends `<feature view> <partition>` to it, so a test sees what a run did and what it read
back from its earlier attempt. With `MLRE_TEST_KILL_AT_PARTITION=k` too, the process SIGKILLs
itself when partition k starts: the node is lost, nothing is reported, no `finally` runs.
"""

from __future__ import annotations

import os
import signal
from typing import Any

PARTITION_LOG_ENV = "MLRE_TEST_PARTITION_LOG"
KILL_AT_ENV = "MLRE_TEST_KILL_AT_PARTITION"


def _arm(log: str, kill_at: int | None) -> None:
    from mlre.features import materialize as engine

    real = engine.materialize_partition

    def probed(store: Any, feature_view: Any, window: Any, partition: int, *args: Any, **kw: Any):
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{feature_view.name} {partition}\n")
        if partition == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(store, feature_view, window, partition, *args, **kw)

    engine.materialize_partition = probed


if os.environ.get(PARTITION_LOG_ENV):
    _kill = os.environ.get(KILL_AT_ENV)
    _arm(os.environ[PARTITION_LOG_ENV], int(_kill) if _kill else None)

"""Dask worker preload: a worker process SIGKILLs itself mid-partition, once per marker file.

Loaded into every worker process of a LocalCluster through Dask's config
(`distributed.worker.preload`), armed by `KILL_MARKER_ENV` (a path the worker processes inherit).
Partitions are written in small batches; the first worker to write a batch claims the marker
(created atomically) and dies right after that write landed, outside the write lock: a partition
half written, at the same step every run (no sleeps). Workers started later find the marker taken.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from mlre.features import materialize as engine

KILL_MARKER_ENV = "MLRE_TEST_DASK_KILL_MARKER"
BATCH_ROWS = 20  # several write batches per partition, so the kill lands between two of them
PRELOAD = __name__


def claim(marker: str) -> bool:
    """True for the one caller that creates the marker file."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: arm this worker process when the marker variable is set."""
    marker = os.environ.get(KILL_MARKER_ENV)
    if not marker:
        return
    real_batches, real_write = engine.iter_latest_batches, engine.write_batch

    def small_batches(*args: Any, **kwargs: Any) -> Any:
        return real_batches(*args, **{**kwargs, "batch_rows": BATCH_ROWS})

    def write_then_die(*args: Any, **kwargs: Any) -> int:
        written = real_write(*args, **kwargs)
        if claim(marker):
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    engine.iter_latest_batches = small_batches
    engine.write_batch = write_then_die

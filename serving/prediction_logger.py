"""The online prediction log: rows buffered in memory, flushed in batches to the lake.

The lake root is `Settings.prediction_log_root`: the local lake by default, the bucket named by
MLRE_PREDICTION_LOG_URI (s3://...) in the cloud, where pods are ephemeral and the drift,
monitoring and canary flows read the log from other pods.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlre.prediction_log import DEFAULT_KEYS, write_predictions

log = logging.getLogger(__name__)


class PredictionLog:
    """Append rows from request threads; a background thread writes them by size or interval.

    A failed write puts the rows back, so they go out with the next flush; `close()` flushes
    what is left (the app's lifespan calls it on shutdown, SIGTERM included). `lake_dir` is a
    local folder or an object-store URI (see mlre.prediction_log.write_predictions).
    """

    def __init__(
        self,
        lake_dir: Path | str,
        model_name: str,
        *,
        flush_rows: int,
        flush_interval_s: float,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.lake_dir = lake_dir
        self.model_name = model_name
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self._on_error = on_error
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefix = f"online-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self.rows_written = 0
        self.key_columns: tuple[str, ...] = DEFAULT_KEYS

    def append(self, rows: list[dict[str, Any]], key_columns: Sequence[str] | None = None) -> None:
        """Queue rows; wake the writer when a batch is full (never writes on the request path).
        `key_columns`: the entity keys the rows carry (the served feature service's join keys)."""
        with self._lock:
            if key_columns:
                self.key_columns = tuple(key_columns)
            self._rows.extend(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        """Write everything queued as one partition; returns the rows written."""
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            self._seq += 1
            run_id = f"{self._prefix}-{self._seq:06d}"
            try:
                write_predictions(
                    pd.DataFrame(rows),
                    self.lake_dir,
                    self.model_name,
                    run_id=run_id,
                    key_columns=self.key_columns,
                )
            except Exception as exc:  # keep the rows for the next try; the metric shows it
                with self._lock:
                    self._rows[:0] = rows
                log.exception("Prediction log flush of %d rows failed", len(rows))
                if self._on_error:
                    self._on_error(exc)
                return 0
            self.rows_written += len(rows)
            return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def start(self) -> None:
        """Start the background writer."""
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> int:
        """Stop the writer and flush the rest; returns the rows written by this last flush."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.flush()

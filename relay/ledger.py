"""The relay's record of the event ids it has emitted, so a re-delivered alert starts nothing.

Prefect's trigger service also skips an event id it has seen, but only for a while and only in
memory; the ledger keeps every id (SQLite, one row per event) across relay restarts.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS emitted (
    event_id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    alertname TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    emitted_at TEXT NOT NULL
)
"""


class Ledger:
    """Emitted event ids in one SQLite file (thread-safe; one writer process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def unseen(self, event_ids: Iterable[str]) -> set[str]:
        """The ids among `event_ids` not emitted yet."""
        wanted = set(event_ids)
        if not wanted:
            return set()
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._db.execute(
                f"SELECT event_id FROM emitted WHERE event_id IN ({marks})",
                sorted(wanted),
            ).fetchall()
        return wanted - {row[0] for row in rows}

    def record(self, events: Sequence[dict[str, Any]]) -> None:
        """Remember `events` as emitted (one transaction)."""
        now = datetime.now(UTC).isoformat()
        rows = [
            (e["id"], e["event"], e["payload"]["alertname"], e["payload"]["fingerprint"], now)
            for e in events
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO emitted VALUES (?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM emitted").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

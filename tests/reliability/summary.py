"""Reliability summary: per input path, cases tried, rejected cleanly, data lost.

As a pytest plugin (its hooks are imported by `tests/reliability/conftest.py`) it tallies every
corpus case as it runs and prints the table at the end of the run; with `MLRE_RELIABILITY_JSON`
set it also writes the table there. As a program it runs the corpus and writes the JSON to
`bench/results/reliability.json`:

    python -m tests.reliability.summary [OUTPUT.json]

A case is "rejected cleanly" when its test passed: the exact error class, a message naming the
input and saying what to do, and no stored state changed. "Data lost" counts cases whose test
failed with `StateChanged` (the online store, registry, prediction log or lake files changed).
A case marked xfail (a known bug in code the corpus does not own) is tried but not clean, and
listed by name with its reason.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import StateChanged

ENV_JSON = "MLRE_RELIABILITY_JSON"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JSON = PROJECT_ROOT / "bench" / "results" / "reliability.json"
COLUMNS = ("input path", "cases tried", "rejected cleanly", "data lost")


@dataclass
class Tally:
    """Outcomes of the cases of one input path."""

    input_path: str
    cases: int = 0
    rejected_cleanly: int = 0
    data_lost: int = 0
    skipped: int = 0
    not_clean: list[str] = field(default_factory=list)


_TALLIES: dict[str, Tally] = {}
_STARTED = time.monotonic()


def input_path_of(item: pytest.Item) -> str | None:
    """The input path a corpus test exercises (its module's INPUT_PATH); None elsewhere."""
    module = getattr(item, "module", None)
    return getattr(module, "INPUT_PATH", None) if module is not None else None


def record(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Count one case once: at its call, or at a setup that failed or skipped."""
    path = input_path_of(item)
    if path is None or (report.when == "setup" and report.passed) or report.when == "teardown":
        return
    tally = _TALLIES.setdefault(path, Tally(path))
    if hasattr(report, "wasxfail"):  # a known bug, marked xfail where it is not ours to fix
        tally.cases += 1
        tally.not_clean.append(f"{item.name} (known bug: {report.wasxfail})")
        return
    if report.skipped:
        tally.skipped += 1
        return
    tally.cases += 1
    if report.passed:
        tally.rejected_cleanly += 1
        return
    tally.not_clean.append(item.name)
    if call.excinfo is not None and call.excinfo.errisinstance(StateChanged):
        tally.data_lost += 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    record(item, call, report)
    return report


def results() -> dict[str, Any]:
    """The table as JSON-ready data, with totals."""
    rows = [asdict(t) for t in _TALLIES.values()]
    totals = {
        key: sum(row[key] for row in rows)
        for key in ("cases", "rejected_cleanly", "data_lost", "skipped")
    }
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "duration_s": round(time.monotonic() - _STARTED, 1),
        "paths": rows,
        "totals": totals,
    }


def render(data: dict[str, Any]) -> str:
    """A plain-text table of `results()`."""
    rows = [
        (r["input_path"], r["cases"], r["rejected_cleanly"], r["data_lost"]) for r in data["paths"]
    ]
    totals = data["totals"]
    rows.append(("total", totals["cases"], totals["rejected_cleanly"], totals["data_lost"]))
    widths = [max(len(str(row[i])) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(row: tuple[object, ...]) -> str:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                 enumerate(zip(row, widths, strict=True))]  # fmt: skip
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [line(COLUMNS), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
    problems = [
        f"  not clean in {r['input_path']}: {', '.join(r['not_clean'])}"
        for r in data["paths"]
        if r["not_clean"]
    ]
    return "\n".join(body + problems)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TALLIES:
        return
    terminalreporter.write_sep("=", "bad-input corpus: reliability summary")
    terminalreporter.write_line(render(results()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(ENV_JSON)
    if target and _TALLIES:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results(), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run `pytest tests/reliability -q`, write the JSON, print the table; pytest's exit code."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]).resolve() if args else DEFAULT_JSON
    target.unlink(missing_ok=True)  # a stale table must not pass for this run's
    env = {**os.environ, ENV_JSON: str(target)}
    command = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider"]
    code = subprocess.call(command, cwd=PROJECT_ROOT, env=env)
    if not target.is_file():
        print(f"no summary written to {target} (pytest exit code {code})", file=sys.stderr)
        return code or 1
    print(f"\nreliability summary written to {target}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

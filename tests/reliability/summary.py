"""Reliability summary: the bad-input corpus (cases tried, rejected cleanly, data lost) and the
injected faults (injected, survived, data lost).

As a pytest plugin (registered for the whole test tree by `tests/conftest.py`) it tallies every
corpus case and every test marked `@pytest.mark.fault("name")`, wherever it lives, and prints
both tables at the end of the run; with `MLRE_RELIABILITY_JSON` set it also writes them there.
`--reliability` keeps only those tests (soak runs included). As a program it runs them and writes
the JSON to `bench/results/reliability.json`:

    python -m tests.reliability.summary [OUTPUT.json]

A case is "rejected cleanly" when its test passed: the exact error class, a message naming the
input and saying what to do, and no stored state changed. A fault is "survived" when its test
passed: a clear failure or none, then recovery. "Data lost" counts tests that failed with
`StateChanged` (the online store, registry, prediction log or lake files are not as they must
be). A test marked xfail (a known bug in code the suite does not own) counts as tried but not
clean, and is listed by name with its reason.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ENV_JSON = "MLRE_RELIABILITY_JSON"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JSON = PROJECT_ROOT / "bench" / "results" / "reliability.json"
COLUMNS = ("input path", "cases tried", "rejected cleanly", "data lost")
FAULT_COLUMNS = ("fault", "injected", "survived", "data lost")
OPTION = "--reliability"


# The JSON names of a row's fields: name, tried, clean, lost, skipped, the tests not clean.
CASE_KEYS = ("input_path", "cases", "rejected_cleanly", "data_lost", "skipped", "not_clean")
FAULT_KEYS = ("fault", "injected", "survived", "data_lost", "skipped", "not_survived")


@dataclass
class Tally:
    """Outcomes of the tests of one row: an input path of the corpus, or one fault."""

    name: str
    tried: int = 0
    clean: int = 0
    lost: int = 0
    skipped: int = 0
    not_clean: list[str] = field(default_factory=list)

    def count(self, outcome: str, line: str | None) -> None:
        """Add one test's outcome ("skipped" | "clean" | "lost" | "failed")."""
        if outcome == "skipped":
            self.skipped += 1
            return
        self.tried += 1
        self.clean += outcome == "clean"
        self.lost += outcome == "lost"
        if line:
            self.not_clean.append(line)

    def row(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The tally as JSON under its table's names (CASE_KEYS or FAULT_KEYS)."""
        values = (self.name, self.tried, self.clean, self.lost, self.skipped, self.not_clean)
        return dict(zip(keys, values, strict=True))


_TALLIES: dict[str, Tally] = {}
_FAULTS: dict[str, Tally] = {}
_STARTED = time.monotonic()


def input_path_of(item: pytest.Item) -> str | None:
    """The input path a corpus test exercises (its module's INPUT_PATH); None elsewhere."""
    module = getattr(item, "module", None)
    return getattr(module, "INPUT_PATH", None) if module is not None else None


def fault_of(item: pytest.Item) -> str | None:
    """The fault a test injects (its `fault` marker's name); None elsewhere."""
    marker = item.get_closest_marker("fault")
    if marker is None:
        return None
    return str(marker.args[0] if marker.args else marker.kwargs.get("name", item.name))


def _lost_data(call: pytest.CallInfo[None]) -> bool:
    if call.excinfo is None:
        return False
    from tests.reliability.harness import StateChanged  # the harness imports MLflow and Feast

    return call.excinfo.errisinstance(StateChanged)


def _outcome(
    report: pytest.TestReport, call: pytest.CallInfo[None], name: str
) -> tuple[str, str | None]:
    """("skipped" | "clean" | "lost" | "failed", the line to list when not clean)."""
    if hasattr(report, "wasxfail"):  # a known bug, marked xfail where it is not ours to fix
        return "failed", f"{name} (known bug: {report.wasxfail})"
    if report.skipped:
        return "skipped", None
    if report.passed:
        return "clean", None
    return ("lost" if _lost_data(call) else "failed"), name


def record(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Count one test once: at its call, or at a setup that failed or skipped."""
    path, fault = input_path_of(item), fault_of(item)
    if (path is None and fault is None) or report.when == "teardown":
        return
    if report.when == "setup" and report.passed:
        return
    outcome, line = _outcome(report, call, item.name)
    if path is not None:
        _TALLIES.setdefault(path, Tally(path)).count(outcome, line)
    if fault is not None:
        _FAULTS.setdefault(fault, Tally(fault)).count(outcome, line)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION,
        action="store_true",
        help="run only the bad-input corpus and the fault-marked tests (soak runs included)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --reliability, deselect everything but the corpus and the fault and soak tests."""
    if not config.getoption(OPTION):
        return
    keep = [i for i in items if input_path_of(i) or fault_of(i) or i.get_closest_marker("soak")]
    kept = {id(item) for item in keep}
    dropped = [item for item in items if id(item) not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    record(item, call, report)
    return report


def _totals(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, int]:
    return {key: sum(row[key] for row in rows) for key in keys}


def results() -> dict[str, Any]:
    """Both tables as JSON-ready data, with totals."""
    rows = [t.row(CASE_KEYS) for t in _TALLIES.values()]
    faults = [t.row(FAULT_KEYS) for t in _FAULTS.values()]
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "duration_s": round(time.monotonic() - _STARTED, 1),
        "paths": rows,
        "totals": _totals(rows, CASE_KEYS[1:5]),
        "faults": {
            "rows": faults,
            "totals": _totals(faults, FAULT_KEYS[1:5]),
        },
    }


def _table(columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> list[str]:
    """A plain-text table; the last row is the total, set off by a rule."""
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]

    def line(row: tuple[object, ...]) -> str:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                 enumerate(zip(row, widths, strict=True))]  # fmt: skip
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(columns), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]


def _render(
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
    totals: dict[str, int],
    keys: tuple[str, ...],
    label: str,
) -> str:
    """A table of (name, tried, clean, lost) with its total, then the tests that were not clean."""
    name, tried, clean, lost, _, not_clean = keys
    table = [(r[name], r[tried], r[clean], r[lost]) for r in rows]
    table.append(("total", totals[tried], totals[clean], totals[lost]))
    listed = [f"  {label} {r[name]}: {', '.join(r[not_clean])}" for r in rows if r[not_clean]]
    return "\n".join(_table(columns, table) + listed)


def render(data: dict[str, Any]) -> str:
    """The corpus table of `results()`."""
    return _render(COLUMNS, data["paths"], data["totals"], CASE_KEYS, "not clean in")


def render_faults(data: dict[str, Any]) -> str:
    """The faults table of `results()`."""
    faults = data["faults"]
    return _render(FAULT_COLUMNS, faults["rows"], faults["totals"], FAULT_KEYS, "not survived:")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _TALLIES:
        terminalreporter.write_sep("=", "bad-input corpus: reliability summary")
        terminalreporter.write_line(render(results()))
    if _FAULTS:
        terminalreporter.write_sep("=", "fault injection: reliability summary")
        terminalreporter.write_line(render_faults(results()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(ENV_JSON)
    if target and (_TALLIES or _FAULTS):
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results(), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the corpus and the fault tests, write the JSON, print the tables; pytest's exit code."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]).resolve() if args else DEFAULT_JSON
    target.unlink(missing_ok=True)  # a stale table must not pass for this run's
    soak_json = PROJECT_ROOT / "bench" / "results" / "soak.json"
    env = {**os.environ, ENV_JSON: str(target), "MLRE_SOAK_JSON": str(soak_json)}
    command = [sys.executable, "-m", "pytest", "tests", OPTION, "-q", "-p", "no:cacheprovider"]
    code = subprocess.call(command, cwd=PROJECT_ROOT, env=env)
    if not target.is_file():
        print(f"no summary written to {target} (pytest exit code {code})", file=sys.stderr)
        return code or 1
    print(f"\nreliability summary written to {target}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

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
from dataclasses import asdict, dataclass, field
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


@dataclass
class Tally:
    """Outcomes of the cases of one input path."""

    input_path: str
    cases: int = 0
    rejected_cleanly: int = 0
    data_lost: int = 0
    skipped: int = 0
    not_clean: list[str] = field(default_factory=list)


@dataclass
class FaultTally:
    """Outcomes of the tests that inject one fault."""

    fault: str
    injected: int = 0
    survived: int = 0
    data_lost: int = 0
    skipped: int = 0
    not_survived: list[str] = field(default_factory=list)


_TALLIES: dict[str, Tally] = {}
_FAULTS: dict[str, FaultTally] = {}
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


def _count_case(path: str, outcome: str, line: str | None) -> None:
    tally = _TALLIES.setdefault(path, Tally(path))
    if outcome == "skipped":
        tally.skipped += 1
        return
    tally.cases += 1
    tally.rejected_cleanly += outcome == "clean"
    tally.data_lost += outcome == "lost"
    if line:
        tally.not_clean.append(line)


def _count_fault(fault: str, outcome: str, line: str | None) -> None:
    tally = _FAULTS.setdefault(fault, FaultTally(fault))
    if outcome == "skipped":
        tally.skipped += 1
        return
    tally.injected += 1
    tally.survived += outcome == "clean"
    tally.data_lost += outcome == "lost"
    if line:
        tally.not_survived.append(line)


def record(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Count one test once: at its call, or at a setup that failed or skipped."""
    path, fault = input_path_of(item), fault_of(item)
    if (path is None and fault is None) or report.when == "teardown":
        return
    if report.when == "setup" and report.passed:
        return
    outcome, line = _outcome(report, call, item.name)
    if path is not None:
        _count_case(path, outcome, line)
    if fault is not None:
        _count_fault(fault, outcome, line)


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
    rows = [asdict(t) for t in _TALLIES.values()]
    faults = [asdict(t) for t in _FAULTS.values()]
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "duration_s": round(time.monotonic() - _STARTED, 1),
        "paths": rows,
        "totals": _totals(rows, ("cases", "rejected_cleanly", "data_lost", "skipped")),
        "faults": {
            "rows": faults,
            "totals": _totals(faults, ("injected", "survived", "data_lost", "skipped")),
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


def render(data: dict[str, Any]) -> str:
    """The corpus table of `results()`."""
    rows = [
        (r["input_path"], r["cases"], r["rejected_cleanly"], r["data_lost"]) for r in data["paths"]
    ]
    totals = data["totals"]
    rows.append(("total", totals["cases"], totals["rejected_cleanly"], totals["data_lost"]))
    problems = [
        f"  not clean in {r['input_path']}: {', '.join(r['not_clean'])}"
        for r in data["paths"]
        if r["not_clean"]
    ]
    return "\n".join(_table(COLUMNS, rows) + problems)


def render_faults(data: dict[str, Any]) -> str:
    """The faults table of `results()`."""
    faults = data["faults"]
    rows = [(r["fault"], r["injected"], r["survived"], r["data_lost"]) for r in faults["rows"]]
    totals = faults["totals"]
    rows.append(("total", totals["injected"], totals["survived"], totals["data_lost"]))
    problems = [
        f"  not survived: {r['fault']}: {', '.join(r['not_survived'])}"
        for r in faults["rows"]
        if r["not_survived"]
    ]
    return "\n".join(_table(FAULT_COLUMNS, rows) + problems)


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
    env = {**os.environ, ENV_JSON: str(target)}
    command = [sys.executable, "-m", "pytest", "tests", OPTION, "-q", "-p", "no:cacheprovider"]
    code = subprocess.call(command, cwd=PROJECT_ROOT, env=env)
    if not target.is_file():
        print(f"no summary written to {target} (pytest exit code {code})", file=sys.stderr)
        return code or 1
    print(f"\nreliability summary written to {target}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

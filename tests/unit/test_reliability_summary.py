"""The reliability summary plugin, run on a throwaway test tree in a child pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlre.settings import PROJECT_ROOT
from tests.reliability.summary import ENV_JSON, OPTION

pytestmark = pytest.mark.unit

TREE = {
    "pytest.ini": """
        [pytest]
        addopts = --strict-markers
        markers =
            fault(name): injects a fault
            soak: long run
    """,
    "test_corpus.py": """
        INPUT_PATH = "toy input"

        def test_refused():
            pass

        def test_not_refused():
            assert False
    """,
    "test_faults.py": """
        import pytest
        from tests.reliability.harness import StateChanged

        @pytest.mark.fault("server killed")
        def test_survives():
            pass

        @pytest.mark.fault("server killed")
        def test_loses_data():
            raise StateChanged("a partition vanished")

        @pytest.mark.fault("disk full")
        def test_cannot_run_here():
            pytest.skip("no way to fill the disk")

        @pytest.mark.soak
        @pytest.mark.fault("long run")
        def test_soak():
            pass

        def test_unrelated():
            pass
    """,
}


def _run(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    for name, text in TREE.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    target = tmp_path / "summary.json"
    env = {**os.environ, ENV_JSON: str(target), "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "pytest", str(tmp_path), OPTION, "-p",
               "tests.reliability.summary", "-p", "no:cacheprovider", "-q"]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    return done, json.loads(target.read_text())


def test_counts_corpus_cases_and_faults_once_and_keeps_only_them(tmp_path: Path) -> None:
    done, data = _run(tmp_path)

    assert "1 deselected" in done.stdout, done.stdout  # test_unrelated
    corpus = {row["input_path"]: row for row in data["paths"]}["toy input"]
    assert (corpus["cases"], corpus["rejected_cleanly"], corpus["data_lost"]) == (2, 1, 0)
    faults = {row["fault"]: row for row in data["faults"]["rows"]}
    killed = faults["server killed"]
    assert (killed["injected"], killed["survived"], killed["data_lost"]) == (2, 1, 1)
    assert killed["not_survived"] == ["test_loses_data"]
    assert (faults["disk full"]["injected"], faults["disk full"]["skipped"]) == (0, 1)
    assert faults["long run"]["survived"] == 1
    assert data["faults"]["totals"] == {"injected": 3, "survived": 2, "data_lost": 1, "skipped": 1}
    assert "| server killed |        2 |        1 |         1 |" in done.stdout

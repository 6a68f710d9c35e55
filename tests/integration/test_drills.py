"""`make drill` as a CI test: every chaos drill on one private local platform, SLO windows scaled
down (bench/drills/), in its own process; each must detect its failure, run its remediation to
completion with the designed outcome (remediated, or escalated where no automatic action is
safe), heal its SLI and lose nothing. The figures (time to alert, to recovery) are information
only: every wait has a deadline far above them, and none is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.drills.__main__ import SCENARIOS
from mlre.settings import PROJECT_ROOT
from tests.integration.test_monitoring_stack import require_monitoring_binaries

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3000)]


def test_every_drill_pages_remediates_and_recovers(tmp_path: Path) -> None:
    require_monitoring_binaries()
    results = tmp_path / "drills.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.drills", "--results", str(results)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=2880, check=False,
    )  # fmt: skip
    output = (done.stdout + done.stderr)[-4000:]
    assert results.exists(), output
    report = json.loads(results.read_text())
    assert [d["scenario"] for d in report["scenarios"]] == list(SCENARIOS), output
    for drill in report["scenarios"]:
        where = f"{drill['scenario']}: {drill}\n{output}"
        assert drill["alert_fired"], where
        assert drill["run_state"] == "COMPLETED", where
        assert drill["outcome"] == drill["expected"], where
        assert drill["sli_recovered"], where
        assert drill["nothing_lost"], where
    assert done.returncode == 0, output
    print(output)

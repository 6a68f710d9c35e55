"""Fixtures for the infra tier: the repository root on sys.path and one mocked run per stack."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `infra` is a top-level folder, not an installed package; make `import infra.*` work.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.infra.infra_harness import Run, run_stack

STACKS = ("dev", "prod")


@pytest.fixture(scope="session")
def stack_runs() -> dict[str, Run]:
    """The whole program run once per stack under mocks (shared: runs take ~1 s each)."""
    return {stack: run_stack(stack) for stack in STACKS}


@pytest.fixture(params=STACKS)
def stack_run(request: pytest.FixtureRequest, stack_runs: dict[str, Run]) -> Run:
    """Each stack's run in turn."""
    return stack_runs[request.param]

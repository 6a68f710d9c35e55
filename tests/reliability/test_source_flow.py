"""Bad source parquet through the `materialize-features` flow: the run fails, nothing is written.

The flow runs as a backfill over the whole source, so a bad file that slipped past validation
would be written (its rows carry a later `created`) and the watermarks would move.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.materialize import MaterializeParams, materialize_features
from mlre.errors import SourceDataError
from tests.reliability.harness import Platform, assert_refused
from tests.reliability.source_cases import CASES, SourceCase

pytestmark = pytest.mark.integration
INPUT_PATH = "source parquet -> materialize-features flow"
# Extra columns are accepted by the flow by design: Feast reads only the columns it defines.
FLOW_CASES = [case for case in CASES if case.through_flow]


def _backfill() -> object:
    now = datetime.now(UTC)
    params = MaterializeParams(mode="backfill", start=now - timedelta(days=30), end=now)
    return materialize_features(params.model_copy(update={"partitions": 1}))


@pytest.mark.parametrize("case", FLOW_CASES, ids=lambda c: c.id)
def test_flow_fails_and_the_online_store_is_untouched(
    platform: Platform, inject_bad_file: Callable[[SourceCase], Path], case: SourceCase
) -> None:
    bad = inject_bad_file(case)
    names = [str(bad), *([case.column] if case.column else [])]
    assert_refused(platform, _backfill, SourceDataError, names=names, fix=case.fix)


def test_flow_fails_when_the_source_was_never_landed(
    platform: Platform, source_moved_away: Path
) -> None:
    assert_refused(
        platform, _backfill, SourceDataError,
        names=[str(source_moved_away)], fix="Write the source first",
    )  # fmt: skip

"""Bad source parquet through `validate_source_path`, against the feature view's own contract."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlre.data.validation import SourceSchema, validate_source_path
from mlre.errors import SourceDataError
from mlre.features.sources import schema_for_view
from tests.reliability.harness import Platform, assert_refused
from tests.reliability.source_cases import CASES, SOURCE, VIEW, SourceCase

pytestmark = pytest.mark.integration
INPUT_PATH = "source parquet -> validate_source_path"


def _schema(platform: Platform, *, strict: bool = False) -> SourceSchema:
    schema = schema_for_view(platform.store().get_feature_view(VIEW))
    return dataclasses.replace(schema, allow_extra_columns=False) if strict else schema


def _validate(path: Path, schema: SourceSchema) -> Callable[[], object]:
    return lambda: validate_source_path(path, schema, now=datetime.now(UTC))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_file_is_refused(
    platform: Platform, inject_bad_file: Callable[[SourceCase], Path], case: SourceCase
) -> None:
    bad = inject_bad_file(case)
    validate = _validate(platform.source_dir(SOURCE), _schema(platform, strict=case.strict))
    names = [str(bad), *([case.column] if case.column else [])]
    assert_refused(platform, validate, SourceDataError, names=names, fix=case.fix)


def test_missing_source_folder_is_refused(platform: Platform, tmp_path: Path) -> None:
    missing = tmp_path / "never-landed"
    assert_refused(
        platform, _validate(missing, _schema(platform)), SourceDataError,
        names=[str(missing)], fix="Write the source first",
    )  # fmt: skip


def test_folder_without_parquet_files_is_refused(platform: Platform, tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("customer_id,event_timestamp\n")
    (tmp_path / ".part-tmp.parquet").write_bytes(b"half written")  # hidden: never read
    assert_refused(
        platform, _validate(tmp_path, _schema(platform)), SourceDataError,
        names=[str(tmp_path)], fix="Write the source first",
    )  # fmt: skip

"""Land the demo's source data in the lake: generate, validate, then write (never the reverse)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlre.data.files import require_parquet
from mlre.data.generator import GeneratorConfig, Scenario, generate_sources, write_sources
from mlre.data.validation import schemas_for_demo, validate_frame
from mlre.errors import MlreError, SourceDataError


class WindowError(MlreError):
    """A time-window parameter is timezone-naive or ends before it starts."""


@dataclass(frozen=True)
class LandedSources:
    """What `land_demo_sources` wrote: rows per source, the folders, the window."""

    rows: dict[str, int]
    folders: dict[str, Path]
    start: datetime
    end: datetime


def demo_config(
    *,
    customers: int,
    days: int,
    seed: int,
    end: datetime | None = None,
    scenario: Scenario | None = None,
) -> GeneratorConfig:
    """A config whose newest daily rows are stamped at `end` (default: last UTC midnight)."""
    end = end or datetime.now(UTC)
    midnight = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return GeneratorConfig(
        n_customers=customers,
        start=midnight - timedelta(days=days),
        days=days,
        seed=seed,
        scenario=scenario or Scenario(),
    )


def land_demo_sources(config: GeneratorConfig, lake_dir: Path, *, now: datetime) -> LandedSources:
    """Generate the three sources, validate each against its schema, then write them."""
    sources = generate_sources(config)
    schemas = schemas_for_demo()
    for name, frame in sources.items():
        validate_frame(frame, schemas[name], source=name, now=now)
    folders = write_sources(sources, lake_dir)
    return LandedSources(
        rows={name: len(frame) for name, frame in sources.items()},
        folders=folders,
        start=config.start,
        end=config.end,
    )


def check_window(
    start: datetime | None,
    end: datetime | None,
    *,
    names: tuple[str, str] = ("start", "end"),
) -> None:
    """Refuse naive or inverted windows: read silently, they would score or train on nothing."""
    for name, value in zip(names, (start, end), strict=True):
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise WindowError(
                f"Parameter {name}={value.isoformat()} has no timezone; pass an aware UTC time "
                f"(e.g. {value.isoformat()}+00:00)."
            )
    if start is not None and end is not None and start > end:
        raise WindowError(
            f"Window is inverted: {names[0]}={start.isoformat()} is after "
            f"{names[1]}={end.isoformat()}; pass a {names[0]} before the {names[1]}."
        )


def lake_location(lake_uri: str | Path, relative: str) -> str:
    """A location under the lake root (`Settings.lake_uri`, local or s3://...), or `relative`
    itself when it is already absolute (a path or a URI); URI options (?region=) are kept."""
    if "://" in relative or Path(relative).is_absolute():
        return relative
    root = str(lake_uri)
    base, sep, query = root.partition("?")
    return f"{base.rstrip('/')}/{relative.strip('/')}" + (f"?{query}" if sep else "")


def read_events(
    folder: Path | str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    timestamp_column: str = "event_timestamp",
) -> pd.DataFrame:
    """Rows of a parquet source folder (local or s3://) with start <= timestamp < end, the filter
    pushed into the scan."""
    check_window(start, end)
    listing = require_parquet(folder, SourceDataError)
    condition = None
    ts = pc.field(timestamp_column)
    if start is not None:
        condition = ts >= pa.scalar(start, pa.timestamp("us", tz="UTC"))
    if end is not None:
        upper = ts < pa.scalar(end, pa.timestamp("us", tz="UTC"))
        condition = upper if condition is None else condition & upper
    return listing.dataset().to_table(filter=condition).to_pandas()

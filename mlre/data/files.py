"""Parquet files of a lake folder, local or on an object store, listed one way for every reader.

Sources live under the offline lake root (`Settings.lake_uri`): a local folder on one machine,
`s3://bucket/prefix` in the cloud. Readers (validation, the materialization engine, the
consistency check, label loading) list files here, through pyarrow's filesystems, so a local
folder and an S3 prefix behave the same; pyarrow reads S3 itself, with no DuckDB extension.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs


def is_remote(location: Path | str) -> bool:
    """True for an object-store URI (s3://...), False for a path or a file:// URI."""
    if isinstance(location, Path) or "://" not in location:
        return False
    return urlsplit(location).scheme != "file"


def shown(location: Path | str) -> str:
    """A location for messages: no user info and no query (either may hold a secret key)."""
    text = str(location)
    scheme, sep, rest = text.split("?", 1)[0].partition("://")
    # rpartition, not urlsplit: a secret key with an unescaped '/' must not leak either.
    return scheme + sep + rest.rpartition("@")[2] if sep else text


def resolve(location: Path | str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local path, a file:// URI or an object-store URI."""
    if not is_remote(location):
        text = str(location)
        local = urlsplit(text).path if text.startswith("file://") else text
        # abspath, not resolve(): messages name the path the caller gave, symlinks and all.
        return pafs.LocalFileSystem(), os.path.abspath(local)
    return pafs.FileSystem.from_uri(str(location))


def _visible(relative: str) -> bool:
    """Readers (pyarrow datasets, Feast, Spark) skip names starting with '.' or '_': so do we."""
    return not any(part.startswith((".", "_")) for part in relative.split("/") if part)


@dataclass(frozen=True)
class ParquetListing:
    """What a location holds: its filesystem, whether it exists, and its visible parquet files."""

    location: str
    filesystem: pafs.FileSystem
    root: str
    exists: bool
    files: tuple[str, ...]

    def display(self, path: str) -> str:
        """How messages name one of the files: a local path, or scheme://bucket/key."""
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return path
        return f"{urlsplit(self.location).scheme}://{path}"

    def dataset(self) -> pads.Dataset:
        """The files as one Arrow dataset (streams record batches, reads only asked columns)."""
        return pads.dataset(list(self.files), format="parquet", filesystem=self.filesystem)


def list_parquet(location: Path | str) -> ParquetListing:
    """Visible `*.parquet` files under a folder (recursively), or the file itself.

    Raises OSError / pyarrow errors when the store does not answer or denies the listing;
    callers turn them into their own error type, naming the location.
    """
    filesystem, root = resolve(location)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.File:
        files: tuple[str, ...] = (root,)
    elif info.type == pafs.FileType.NotFound:
        files = ()
    else:
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        prefix = root.rstrip("/") + "/"
        files = tuple(
            sorted(
                f.path
                for f in filesystem.get_file_info(selector)
                if f.type == pafs.FileType.File
                and f.path.endswith(".parquet")
                and _visible(f.path.removeprefix(prefix))
            )
        )
    # An object store has no folders: a prefix with objects under it exists.
    exists = info.type != pafs.FileType.NotFound or bool(files)
    return ParquetListing(str(location), filesystem, root, exists, files)


def require_parquet(location: Path | str, error: type[Exception]) -> ParquetListing:
    """`list_parquet`, failing with `error` (naming the location and the fix) when the store
    does not answer, the location is missing, or it holds no parquet files."""
    try:
        listing = list_parquet(location)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise error(
            f"Source {shown(location)} could not be listed ({exc}); check the lake location "
            "(MLRE_OFFLINE_URI) and that these credentials may list it (s3:ListBucket)."
        ) from exc
    if not listing.files:
        problem = "holds no parquet files" if listing.exists else "does not exist"
        raise error(
            f"Source {shown(location)} {problem}; generate or land the source data first "
            "(mlre generate)."
        )
    return listing

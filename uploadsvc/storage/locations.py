"""Where two configured storage URLs point, and whether they overlap.

Staging inside the storage root (or the other way round) would mix staged
files with stored objects: the sweep would take staged bytes for objects
without a record, and a delete would remove both. Start-up refuses it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..config import ConfigError, protocol_of


def location(url: str) -> tuple[str, PurePosixPath]:
    """`(protocol, path)`: `file` paths resolved like the service resolves them
    (relative to the working directory), other stores as `bucket/prefix`."""
    protocol = protocol_of(url)
    rest = url.split("://", 1)[1] if "://" in url else url
    if protocol in ("file", "local"):
        return "file", PurePosixPath(Path(rest).resolve())
    return protocol, PurePosixPath("/", rest.strip("/"))


def check_apart(storage_url: str, staging_url: str) -> None:
    """`ConfigError` when staging and storage share a folder or one holds the other."""
    (p1, storage), (p2, staging) = location(storage_url), location(staging_url)
    if p1 != p2:
        return
    if storage == staging or storage in staging.parents or staging in storage.parents:
        raise ConfigError(
            f"staging.url: {staging_url} overlaps the storage at {storage_url}: "
            "give staging a folder or prefix of its own, outside the storage root"
        )

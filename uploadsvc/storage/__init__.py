"""`open_storage(url, options)`: the backend for a configured fsspec URL.

Object stores (S3 and compatible) need their own writer (multipart upload,
abort, conditional PUT); every other fsspec filesystem can rename, so one
implementation serves the local disk, `memory://` and the rest.
"""

from __future__ import annotations

from typing import Any

import fsspec

from ..errors import StorageUnavailable
from .files import FileStorage
from .interface import BLOCK_SIZE, ObjectInfo, ObjectWriter, Storage, check_in_time

__all__ = ["BLOCK_SIZE", "ObjectInfo", "ObjectWriter", "Storage", "check_in_time", "open_storage"]

_OBJECT_STORES = {"s3", "s3a"}


def open_storage(url: str, options: dict[str, Any] | None = None) -> Storage:
    """Build the storage for `url`; `StorageUnavailable` if fsspec cannot."""
    options = dict(options or {})
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in _OBJECT_STORES:
        # A private instance: s3fs's instance cache would share sessions (and
        # their state) between apps and between tests.
        options.setdefault("skip_instance_cache", True)
    elif protocol in ("file", "local"):
        options.setdefault("auto_mkdir", True)
    try:
        fs, root = fsspec.url_to_fs(url, **options)
    except (ImportError, ValueError, TypeError) as e:
        raise StorageUnavailable(f"storage {url}: {e}") from e
    if protocol in _OBJECT_STORES:
        from .s3 import S3Storage

        return S3Storage(fs, root, url)
    return FileStorage(fs, root, url)

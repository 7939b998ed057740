"""The storage layer: one interface (`interface.py`), backends by URL protocol
(`registry.py`), each in a module of its own.

    local.py   a local folder                 part file + fsync + rename; flock guard
    memory.py  memory://                      part file + rename; a lock of the process
               (files.py: the part-file-and-rename core both share, and sftp.py too)
    s3.py      S3 and S3-compatible stores    multipart upload + conditional PUT
    azure.py   Azure Blob Storage             staged blocks + committed block list
    gcs.py     Google Cloud Storage           resumable session + generation preconditions
               (gcsapi.py: the small JSON API client it drives)
    sftp.py    a folder on an SSH server      part file + posix-rename + lock file
               (sftpremote.py: its connections; sftplock.py: the lock on the server)
"""

from __future__ import annotations

from .interface import (
    BLOCK_SIZE,
    REQUIRED_ABILITIES,
    Ability,
    ObjectInfo,
    ObjectWriter,
    Storage,
    check_in_time,
)
from .registry import open_storage

__all__ = [
    "BLOCK_SIZE",
    "REQUIRED_ABILITIES",
    "Ability",
    "ObjectInfo",
    "ObjectWriter",
    "Storage",
    "check_in_time",
    "open_storage",
]

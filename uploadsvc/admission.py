"""Whether a new upload may start: decided before a byte of its body is read.

Two limits, both from `[limits]`:

- `max_concurrent_uploads`: uploads whose bodies are being received at once,
  on both paths together. One more is refused with 503 `busy` and a
  `Retry-After`, so the total memory and connections that slow or stalled
  clients can hold stays bounded whatever each one does.
- `min_free_bytes`: a local folder the upload would be written to (storage,
  and staging for the background path) with less free space than this
  refuses it with 507 `insufficient_storage`, before the disk fills and every
  upload (and every record write) starts failing. Object stores are not
  checked: they have no free space to ask for.

The free space is read in a thread (a stat of a slow or network disk must not
hold the event loop) and kept for `FREE_SPACE_TTL` seconds, so a burst of
uploads costs one look at the disk, not one each.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from .errors import Busy, InsufficientStorage
from .storage import Ability, Storage

#: What a refused client is told to wait: about what an upload takes to finish
#: here, so a retry is likely to find a free slot.
RETRY_AFTER_SECONDS = 5

#: How long a reading of a folder's free space is trusted.
FREE_SPACE_TTL = 1.0


class Admission:
    """Counts uploads being received and checks free space before each new one."""

    def __init__(self, max_concurrent: int = 0, min_free_bytes: int = 0) -> None:
        self.max_concurrent = max_concurrent
        self.min_free_bytes = min_free_bytes
        self.active = 0
        self._free: dict[Path, tuple[float, int]] = {}

    @asynccontextmanager
    async def admit(self, key: str, *targets: Storage) -> AsyncIterator[None]:
        """Hold a slot while the body of upload `key` is received into `targets`;
        `Busy` or `InsufficientStorage` instead, before anything is read."""
        if self.max_concurrent and self.active >= self.max_concurrent:
            raise Busy(
                f"{self.active} uploads are in progress, the most this service takes "
                f"at once; retry in {RETRY_AFTER_SECONDS} s",
                RETRY_AFTER_SECONDS,
            )
        # Taken before the free-space check awaits, so a burst cannot overshoot.
        self.active += 1
        try:
            for target in targets:
                await self._check_space(key, target)
            yield
        finally:
            self.active -= 1

    async def _check_space(self, key: str, target: Storage) -> None:
        if not self.min_free_bytes or Ability.local_files not in target.abilities:
            return
        path = target.local_path(key)
        if path is None:
            return
        free = await self._free_bytes(path.parent)
        if free < self.min_free_bytes:
            raise InsufficientStorage(
                f"{target.url} has {free} bytes free, less than the {self.min_free_bytes} "
                "this service keeps free ([limits] min_free_bytes)"
            )

    async def _free_bytes(self, folder: Path) -> int:
        now = time.monotonic()
        known = self._free.get(folder)
        if known is not None and known[0] > now:
            return known[1]
        free = await asyncio.to_thread(_free_bytes, folder)
        self._free[folder] = (now + FREE_SPACE_TTL, free)
        return free


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk of `folder`, or of its nearest existing parent (a
    storage folder is made on first write)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free

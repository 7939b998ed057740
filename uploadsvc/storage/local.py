"""A folder on this machine's disk: `file://` URLs (and plain paths).

The part file is fsynced before the rename and the folder after it: when
`commit` returns, the object survives a power cut. Writeback is started every
`FLUSH_EVERY` bytes while the upload is still arriving, so the final fsync has
little left to wait for (the flush overlaps the receive instead of following it).

Conditional small writes compare and rename under an `flock` on the root
folder, so several processes (`uvicorn --workers 4`, two services on one
folder) are safe; create-if-absent needs no guard at all: a hard link onto an
existing name fails atomically. A staged file on the same disk is linked in,
not copied (`adopt`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Self

from fsspec.implementations.local import LocalFileSystem

from ..errors import PreconditionFailed, StorageUnavailable
from .files import (
    FLUSH_EVERY,
    GUARD_TIMEOUT,
    RenamingStorage,
    folder_of,
    fsync_path,
    part_name,
    rm_quietly,
)
from .interface import Ability, ObjectInfo, Storage


class LocalStorage(RenamingStorage):
    """A folder on this machine's disk: durable, and shared safely between processes."""

    abilities = frozenset(Ability)

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> Self:
        # Without auto_mkdir, writing into a folder that does not exist yet fails.
        options.setdefault("auto_mkdir", True)
        return super().from_url(url, options)

    def names(self) -> Sequence[str]:
        """Names only, no stat per file: a page of the upload list reads the folder,
        which is three times cheaper so (16 instead of 53 ms for 30,000 files here)."""
        return os.listdir(self.root)

    @classmethod
    def at(cls, folder: str | Path) -> LocalStorage:
        root = str(Path(folder).resolve())
        return cls(LocalFileSystem(auto_mkdir=True), root, f"file://{root}")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """An exclusive `flock` on the root folder: no extra file, and it holds across
        processes and across threads (each call opens its own descriptor)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + GUARD_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageUnavailable(
                            f"storage {self.url}: lock on {self.root} held for "
                            f"over {GUARD_TIMEOUT:g} s"
                        ) from None
                    time.sleep(0.001)
            yield
        finally:
            os.close(fd)  # releases the lock

    def finish_part(self, f: IO[bytes]) -> None:
        f.flush()
        os.fsync(f.fileno())

    def sync_folder(self, folder: str) -> None:
        fsync_path(folder)

    def written(self, f: IO[bytes], start: int, end: int) -> bool:
        if end - start < FLUSH_EVERY:
            return False
        f.flush()
        # Ask the kernel to start writing these pages back now, without
        # waiting; the fsync at commit then only waits for the tail.
        os.posix_fadvise(f.fileno(), start, end - start, os.POSIX_FADV_DONTNEED)
        return True

    def publish_new(self, part: str, final: str) -> None:
        """A hard link onto an existing name fails atomically: no guard needed."""
        try:
            os.link(part, final)
        except FileExistsError:
            raise PreconditionFailed(f"{final} already exists") from None
        rm_quietly(self.fs, part)

    def local_path(self, key: str) -> Path:
        return Path(self.path(key))

    async def adopt(self, key: str, source: Storage) -> ObjectInfo:
        """Link the source's file in when it is on this disk too (no copy at all)."""
        path = source.local_path(key)
        if path is None:
            return await super().adopt(key, source)

        def adopt() -> ObjectInfo:
            final = self.path(key)
            part = part_name(final)
            os.makedirs(folder_of(final), exist_ok=True)
            try:
                os.link(path, part)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                    raise
                _copy_durably(path, part)
            try:
                os.replace(part, final)
            except BaseException:
                rm_quietly(self.fs, part)
                raise
            fsync_path(folder_of(final))
            return ObjectInfo(key, os.path.getsize(final))

        return await self._run(adopt)


def _copy_durably(src: Path, dst: str) -> None:
    shutil.copyfile(src, dst)  # sendfile/copy_file_range: the kernel copies
    fsync_path(dst)

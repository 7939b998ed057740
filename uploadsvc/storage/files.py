"""Storage on filesystems that can rename: the local disk, `memory://`, and
any other fsspec filesystem that is not an object store.

Layout under the root: `<id>` (the bytes), `<id>.json` (the record), and,
only while a write is in flight, `<key>.<random>.part` beside its target.

A write goes to the part file and is renamed onto the key at commit, so no
reader and no crash ever sees half an object. On the local disk the part file
is fsynced before the rename and the folder after it: when `commit` returns,
the object survives a power cut. Writeback is started every `FLUSH_EVERY` bytes
while the upload is still arriving, so the final fsync has little left to wait
for (the flush overlaps the receive instead of following it).

fsspec's sync API is blocking, so every call runs in a worker thread; the
writes of one object run in order on a `Lane`, overlapping the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from ..errors import NotFound, PreconditionFailed, StorageUnavailable
from ..offload import Lane
from .interface import ObjectInfo, ObjectWriter, Storage, checked_key, read_blocks

#: Start the kernel's writeback after this many new bytes (local disk only).
FLUSH_EVERY = 16 << 20

T = TypeVar("T")
log = logging.getLogger(__name__)


class FileStorage(Storage):
    """Keys are files directly under `root`; see the module docstring for the guarantees."""

    def __init__(self, fs: AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        # Local files can be fsynced; other filesystems (memory) have no disk.
        self.durable = isinstance(fs, LocalFileSystem)
        # Serialises conditional small writes within this process. Instances
        # that share state across hosts do so through an object store (S3),
        # whose conditional PUTs need no lock.
        self._small_lock = threading.Lock()

    def path(self, key: str) -> str:
        return f"{self.root}/{checked_key(key)}"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(_translated, self, fn, *args)

    def create(self, key: str) -> ObjectWriter:
        return _FileWriter(self, key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        with _errors(self):
            async for block in read_blocks(
                lambda mode: self.fs.open(self.path(key), mode), start, end
            ):
                yield block

    async def size(self, key: str) -> int:
        return int(await self._run(self.fs.size, self.path(key)))

    async def delete(self, key: str) -> None:
        await self._run(_rm_quietly, self.fs, self.path(key))

    async def list(self, suffix: str = "") -> list[str]:
        def ls() -> list[str]:
            try:
                names = self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []
            keys = (str(n).rstrip("/").rsplit("/", 1)[-1] for n in names)
            return [k for k in keys if k.endswith(suffix) and not k.endswith(".part")]

        return await self._run(ls)

    async def put_small(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Part file (fsynced), then a publish step that is atomic for readers.

        Only the compare-and-rename holds the lock, never the write or the
        fsync, so concurrent uploads do not queue behind each other's flushes.
        On the local disk, create-if-absent is a hard link, which the kernel
        refuses atomically when the name exists: safe across processes too.
        """

        def put() -> str:
            final = self.path(key)
            part = _part_name(final)
            try:
                self._write_part(part, data)
                if if_none_match and self.durable:
                    try:
                        os.link(part, final)
                    except FileExistsError:
                        raise PreconditionFailed(f"{key} already exists") from None
                    _rm_quietly(self.fs, part)
                else:
                    with self._small_lock:
                        if if_none_match or if_match is not None:
                            current = _etag_or_none(self, key)
                            if if_none_match and current is not None:
                                raise PreconditionFailed(f"{key} already exists")
                            if if_match is not None and current != if_match:
                                raise PreconditionFailed(f"{key} changed")
                        self.fs.mv(part, final)
            except BaseException:
                _rm_quietly(self.fs, part)
                raise
            if self.durable:
                _fsync_path(os.path.dirname(final))
            return _etag(data)

        return await self._run(put)

    async def get_small(self, key: str) -> tuple[bytes, str]:
        data = await self._run(self.fs.cat_file, self.path(key))
        return data, _etag(data)

    async def check(self) -> None:
        # Cheap on purpose (one stat when the folder exists): /healthz calls it.
        try:
            await self._run(self.fs.makedirs, self.root, True)
        except NotFound:  # a dangling symlink on the way, say an unmounted disk
            raise StorageUnavailable(f"storage {self.url}: cannot create {self.root}") from None

    async def put_local_file(self, key: str, path: Path) -> ObjectInfo:
        """Link the staged file in when it is on the same disk (no copy at all)."""
        if not self.durable:
            return await super().put_local_file(key, path)

        def adopt() -> ObjectInfo:
            final = self.path(key)
            part = _part_name(final)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                os.link(path, part)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                    raise
                _copy_durably(path, part)
            try:
                os.replace(part, final)
            except BaseException:
                _rm_quietly(self.fs, part)
                raise
            _fsync_path(os.path.dirname(final))
            return ObjectInfo(key, os.path.getsize(final))

        return await self._run(adopt)

    def _write_part(self, part: str, data: bytes) -> None:
        with self.fs.open(part, "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())


class _FileWriter(ObjectWriter):
    """Writes `<key>.<random>.part` on a lane; commit fsyncs and renames it onto the key."""

    def __init__(self, storage: FileStorage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._final = storage.path(key)
        self._part = _part_name(self._final)
        self._file: IO[bytes] | None = None
        self._opened = False
        self._committing = False
        self._lane = Lane()
        self._size = 0
        self._flushed_to = 0
        self._done = False

    async def write(self, block: bytes) -> None:
        await self._lane.submit(_translated, self._storage, self._write_sync, block)

    async def commit(self) -> ObjectInfo:
        self._committing = True
        # On the lane, like the writes: a cancelled commit still ends before
        # the abort that follows can touch the same files.
        await self._lane.submit(_translated, self._storage, self._commit_sync)
        await self._lane.drain()
        self._done = True
        return ObjectInfo(self._key, self._size)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        await self._lane.cancel()
        await asyncio.to_thread(self._abort_sync)

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = self._storage.fs.open(self._part, "wb")
            self._opened = True
        return self._file

    def _write_sync(self, block: bytes) -> None:
        f = self._open()
        f.write(block)
        self._size += len(block)
        if self._storage.durable and self._size - self._flushed_to >= FLUSH_EVERY:
            f.flush()
            # Ask the kernel to start writing these pages back now, without
            # waiting; the fsync at commit then only waits for the tail.
            os.posix_fadvise(
                f.fileno(), self._flushed_to, self._size - self._flushed_to, os.POSIX_FADV_DONTNEED
            )
            self._flushed_to = self._size

    def _commit_sync(self) -> None:
        f = self._open()
        if self._storage.durable:
            f.flush()
            os.fsync(f.fileno())
        f.close()
        self._file = None
        self._storage.fs.mv(self._part, self._final)
        if self._storage.durable:
            _fsync_path(os.path.dirname(self._final))

    def _abort_sync(self) -> None:
        if not self._opened:
            return  # there is no part file
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            _rm_quietly(self._storage.fs, self._part)
            if self._committing:
                # The rename may have happened before the commit failed (at the
                # folder fsync): the key is this upload's own, so remove it.
                _rm_quietly(self._storage.fs, self._final)
        except OSError as e:
            # Abort runs while another error is propagating: report, don't mask it.
            log.warning("could not remove %s: %s", self._part, e)


def _part_name(final: str) -> str:
    return f"{final}.{secrets.token_hex(8)}.part"


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _etag_or_none(storage: FileStorage, key: str) -> str | None:
    try:
        return _etag(storage.fs.cat_file(storage.path(key)))
    except FileNotFoundError:
        return None


def _fsync_path(path: str) -> None:
    """fsync a file or a folder by name (a folder's fsync makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durably(src: Path, dst: str) -> None:
    shutil.copyfile(src, dst)  # sendfile/copy_file_range: the kernel copies
    _fsync_path(dst)


def _rm_quietly(fs: AbstractFileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


@contextmanager
def _errors(storage: FileStorage) -> Iterator[None]:
    """Translate OS errors at the storage boundary."""
    try:
        yield
    except FileNotFoundError as e:
        raise NotFound("no such object") from e
    except (PreconditionFailed, NotFound):
        raise
    except OSError as e:
        raise StorageUnavailable(f"storage {storage.url} failed: {e.strerror or e}") from e


def _translated(storage: FileStorage, fn: Callable[..., T], *args: Any) -> T:
    with _errors(storage):
        return fn(*args)

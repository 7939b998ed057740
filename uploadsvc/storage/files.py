"""Storage on filesystems that can rename: the part-file-and-rename core that the
local disk (`local.py`), `memory://` (`memory.py`) and a folder on an SSH server
(`sftp.py`) share.

Layout under the root: `<id>` (the bytes), `<id>.json` (the record), and,
only while a write is in flight, `<key>.<random>.part` beside its target.

A write goes to the part file and is renamed onto the key at commit, so no
reader and no crash ever sees half an object. Each backend says how a part
file and a rename become durable (`finish_part`, `sync_folder`) and what
guards a compare-and-rename (and a delete) against every other writer of the
store (`guard`).

fsspec's sync API is blocking, so every call runs in a worker thread; the
writes of one object run in order on a `Lane`, overlapping the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Any, Self, TypeVar

import fsspec
from fsspec import AbstractFileSystem

from ..errors import NotFound, PreconditionFailed, ServiceError, StorageUnavailable
from ..offload import Lane, outlast_cancellation
from .interface import ObjectInfo, ObjectWriter, Storage, checked_key, read_blocks

#: Start the kernel's writeback after this many new bytes (local disk only).
FLUSH_EVERY = 16 << 20

#: The longest a conditional write waits for another writer's guard.
GUARD_TIMEOUT = 10.0

T = TypeVar("T")
log = logging.getLogger(__name__)


class RenamingStorage(Storage):
    """Keys are files directly under `root`; see the module docstring for the guarantees.

    Subclasses say how to make a part file durable and how to guard a
    compare-and-rename against every other writer of the same store.
    """

    def __init__(self, fs: AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> Self:
        try:
            fs, root = fsspec.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as e:
            raise StorageUnavailable(f"storage {url}: {e}") from e
        return cls(fs, root, url)

    def path(self, key: str) -> str:
        return f"{self.root}/{checked_key(key)}"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread. A thread cannot be stopped, so a cancelled
        caller waits for it to end: whoever cleans up next (a DELETE after a
        cancelled move into storage) must find its work done, not still running."""
        call = asyncio.ensure_future(asyncio.to_thread(_translated, self, fn, *args))
        return await outlast_cancellation(call)

    # Hooks (sync, called on worker threads).

    @abstractmethod
    def guard(self) -> AbstractContextManager[None]:
        """Held across a compare-and-rename; excludes every other conditional writer."""

    def finish_part(self, f: IO[bytes]) -> None:
        """Make a written part file durable before it is renamed (default: nothing to do)."""

    def sync_folder(self, folder: str) -> None:
        """Make a rename in `folder` durable (default: nothing to do)."""

    def written(self, f: IO[bytes], start: int, end: int) -> bool:
        """Bytes `start:end` of a part file are not yet handed to writeback; True if now they are.

        Default: never (nothing to hand over).
        """
        return False

    def publish_new(self, part: str, final: str) -> None:
        """Rename `part` onto `final` unless `final` exists (`PreconditionFailed`)."""
        with self.guard():
            if self.fs.exists(final):
                raise PreconditionFailed(f"{final} already exists")
            self.fs.mv(part, final)

    def publish_replacing(self, part: str, final: str, if_match: str) -> None:
        """Rename `part` onto `final` if `final` still has the etag `if_match`
        (`PreconditionFailed` if not), under the guard."""
        with self.guard():
            if etag_or_none(self, final) != if_match:
                raise PreconditionFailed(f"{final} changed")
            self.fs.mv(part, final)

    # The interface.

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
        """Under the guard, like a compare-and-rename: a delete in the middle of one
        would be undone by its rename (a deleted record coming back)."""

        def delete() -> None:
            try:
                with self.guard():
                    rm_quietly(self.fs, self.path(key))
            except FileNotFoundError:
                pass  # no folder yet: nothing to delete

        await self._run(delete)

    async def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> list[str]:
        def ls() -> list[str]:
            try:
                names = self.names()
            except FileNotFoundError:
                return []
            return sorted(
                k
                for k in names
                if k.startswith(prefix) and k > start_after and not k.endswith(".part")
            )[:limit]

        return await self._run(ls)

    def names(self) -> Sequence[str]:
        """Every name in the root folder (sync; `FileNotFoundError` if it is missing)."""
        return [str(n).rstrip("/").rsplit("/", 1)[-1] for n in self.fs.ls(self.root, detail=False)]

    async def remove_incomplete(
        self, older_than: float, began: Callable[[str], float | None] = lambda key: None
    ) -> int:
        """Part files whose writer died: named `<key>.<random>.part`, aged by their mtime
        (which a live writer keeps fresh)."""

        def remove() -> int:
            try:
                entries = self.fs.ls(self.root, detail=True)
            except FileNotFoundError:
                return 0
            cutoff = time.time() - older_than
            removed = 0
            for entry in entries:
                name = str(entry["name"])
                if name.endswith(".part") and _mtime(entry) < cutoff:
                    rm_quietly(self.fs, name)
                    removed += 1
            return removed

        return await self._run(remove)

    async def put_small(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Part file (made durable), then a publish step that is atomic for readers.

        Only the compare-and-rename holds the guard, never the write or the
        fsync, so concurrent uploads do not queue behind each other's flushes.
        """

        def put() -> str:
            final = self.path(key)
            part = part_name(final)
            try:
                self.write_part(part, data)
                if if_none_match:
                    self.publish_new(part, final)
                elif if_match is not None:
                    self.publish_replacing(part, final, if_match)
                else:
                    self.fs.mv(part, final)
            except BaseException:
                rm_quietly(self.fs, part)
                raise
            self.sync_folder(folder_of(final))
            return _etag(data)

        return await self._run(put)

    async def put_marker(self, key: str) -> None:
        """An empty file, no flush: the record written next in the same folder flushes
        the folder, which keeps the marker's name with its own."""

        def touch() -> None:
            with self.fs.open(self.path(key), "wb"):
                pass

        await self._run(touch)

    async def get_small(self, key: str) -> tuple[bytes, str]:
        data = await self._run(self.fs.cat_file, self.path(key))
        return data, _etag(data)

    async def check(self) -> None:
        # Cheap on purpose (one stat when the folder exists): /healthz calls it.
        try:
            await self._run(self.fs.makedirs, self.root, True)
        except NotFound:  # a dangling symlink on the way, say an unmounted disk
            raise StorageUnavailable(f"storage {self.url}: cannot create {self.root}") from None

    def write_part(self, part: str, data: bytes) -> None:
        with self.fs.open(part, "wb") as f:
            f.write(data)
            self.finish_part(f)


class _FileWriter(ObjectWriter):
    """Writes `<key>.<random>.part` on a lane; commit makes it durable and renames it."""

    def __init__(self, storage: RenamingStorage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._final = storage.path(key)
        self._part = part_name(self._final)
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

    async def idle(self) -> None:
        # The write in flight holds its block until it ends.
        await self._lane.drain()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = self._storage.fs.open(self._part, "wb")
            self._opened = True
        return self._file

    def _write_sync(self, block: bytes) -> None:
        f = self._open()
        f.write(block)
        self._size += len(block)
        if self._storage.written(f, self._flushed_to, self._size):
            self._flushed_to = self._size

    def _commit_sync(self) -> None:
        f = self._open()
        self._storage.finish_part(f)
        f.close()
        self._file = None
        self._storage.fs.mv(self._part, self._final)
        self._storage.sync_folder(folder_of(self._final))

    def _abort_sync(self) -> None:
        if not self._opened:
            return  # there is no part file
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except (OSError, ServiceError) as e:  # a connection gone with the upload, say
                log.warning("could not close %s: %s", self._part, e)
        try:
            rm_quietly(self._storage.fs, self._part)
            if self._committing:
                # The rename may have happened before the commit failed (at the
                # folder fsync): the key is this upload's own, so remove it.
                rm_quietly(self._storage.fs, self._final)
        except (OSError, ServiceError) as e:  # a store that cannot be reached, say
            # Abort runs while another error is propagating: report, don't mask it.
            log.warning("could not remove %s: %s", self._part, e)


def part_name(final: str) -> str:
    return f"{final}.{secrets.token_hex(8)}.part"


def folder_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _mtime(entry: dict[str, Any]) -> float:
    """A listing entry's modification time as a timestamp (fsspec backends differ)."""
    value = entry.get("mtime", entry.get("created", 0))
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def etag_or_none(storage: RenamingStorage, path: str) -> str | None:
    try:
        return _etag(storage.fs.cat_file(path))
    except FileNotFoundError:
        return None


def fsync_path(path: str) -> None:
    """fsync a file or a folder by name (a folder's fsync makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rm_quietly(fs: AbstractFileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


@contextmanager
def _errors(storage: Storage) -> Iterator[None]:
    """Translate OS errors at the storage boundary."""
    try:
        yield
    except FileNotFoundError as e:
        raise NotFound("no such object") from e
    except (PreconditionFailed, NotFound, StorageUnavailable):
        raise
    except OSError as e:
        raise StorageUnavailable(f"storage {storage.url} failed: {e.strerror or e}") from e


def _translated(storage: Storage, fn: Callable[..., T], *args: Any) -> T:
    with _errors(storage):
        return fn(*args)

"""The one storage interface every upload path writes through.

Keys are short relative names made from generated ids (`<id>` for the bytes,
`<id>.json` for the record beside them, as tusd keeps `<id>.info`); a backend
joins them to its root. The guarantees, each covered by tests/contract:

- nothing is visible under a key until `ObjectWriter.commit` returns, and then
  the whole object is (local: part file, fsync, rename, fsync the folder;
  S3: the multipart upload completes or one PUT);
- `abort` is idempotent and leaves no part file and no pending multipart
  upload; leaving a writer's `async with` by an exception, or without having
  committed, aborts (the opposite of fsspec, where closing commits);
- backend failures surface as `StorageUnavailable`, missing keys as `NotFound`;
- `put_small`/`get_small` are whole-object reads and writes with conditions,
  which is what records and locks need for several instances to share a
  bucket: `if_none_match` creates only if absent, `if_match` replaces only if
  unchanged; a lost race raises `PreconditionFailed`.

Each backend *declares* which guarantees it keeps (`Storage.abilities`), with
its own store's primitives; start-up refuses a backend that lacks one the
configuration needs (`registry.open_storage`), and the contract suite skips
what a backend declares it cannot do, with the reason, instead of guessing
from its name. A backend never fakes an ability: one it cannot keep is left
out of its declaration.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self

from ..errors import StorageUnavailable

#: Size of the blocks that move between the ingest, the hash and the backend.
#: Large enough that per-call overhead (thread hops, syscalls) vanishes, small
#: enough that memory stays flat.
BLOCK_SIZE = 1 << 20


class Ability(StrEnum):
    """A guarantee a backend keeps; the value is how messages name it."""

    #: Nothing is visible under a key until commit, then all of it; abort publishes nothing.
    atomic_commit = "whole-or-nothing commit"
    #: `put_small(if_none_match=True)`: exactly one of several racing creators wins.
    conditional_create = "conditional create"
    #: `put_small(if_match=etag)`: a replace based on a stale read fails.
    conditional_replace = "conditional replace"
    #: The two conditions above hold between processes (and hosts) sharing the store,
    #: not only between tasks of one process.
    shared_conditions = "conditional writes shared between processes"
    #: A listing shows every committed key at once, whoever wrote it (no stale cache).
    consistent_listing = "consistent listing"
    #: A commit survives a crash of this machine once it returns (fsync, or a remote store).
    durable_commit = "durable commit"
    #: Objects are files on this machine's disk (`Storage.local_path`), so one
    #: backend can link another's object in rather than copy it (`Storage.adopt`).
    local_files = "objects are local files"


#: What every storage must keep for the service's promises to hold.
REQUIRED_ABILITIES = frozenset(
    {
        Ability.atomic_commit,
        Ability.conditional_create,
        Ability.conditional_replace,
        Ability.consistent_listing,
    }
)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectWriter(ABC):
    """A new object being written; invisible until `commit`.

    `write` may return before the block is on the backend (the write overlaps
    the next receive), so the caller hands over immutable `bytes`.
    """

    @abstractmethod
    async def write(self, block: bytes) -> None: ...

    @abstractmethod
    async def commit(self) -> ObjectInfo: ...

    @abstractmethod
    async def abort(self) -> None: ...

    async def idle(self) -> None:
        """The client stopped sending for now: keep nothing buffered in memory that can
        wait elsewhere (a stalled upload must pin little memory). Writes may follow.
        The default does nothing: for writers that hold no block between writes."""
        return None

    async def __aenter__(self) -> ObjectWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Abort on every way out that is not a commit: an error, a cancelled
        # task (client gone), or a plain return that forgot to commit. Shielded
        # so a cancellation cannot leave a part file or multipart upload behind.
        await asyncio.shield(self.abort())


class Storage(ABC):
    """A place to keep uploads and their records, over one fsspec filesystem."""

    #: The guarantees this backend keeps; see `Ability`.
    abilities: ClassVar[frozenset[Ability]]

    #: The configured URL, for messages (never contains credentials).
    url: str

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> Self:
        """The backend for a configured URL and its `[storage.options]`.

        Builds clients only: nothing may contact the store here (that is
        `check`, which runs under a deadline). Raise `StorageUnavailable` for
        options the underlying library refuses.
        """

    @abstractmethod
    def create(self, key: str) -> ObjectWriter:
        """A writer for a new object under `key`, a key never used before.

        Fresh keys are what let a failed or cancelled commit clean up by
        deleting the key outright: nothing older can live there.
        """

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes `start` up to `end` (exclusive; None: to the end), in blocks."""

    @abstractmethod
    async def size(self, key: str) -> int:
        """Size in bytes of a committed object; `NotFound` if absent."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an object; absent is not an error."""

    @abstractmethod
    async def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> list[str]:
        """Committed keys that start with `prefix` and sort after `start_after`, in order,
        at most `limit` of them (None: all).

        Straight from the store, never from a cache. What a page of N keys
        costs is a page of the store's own listing (S3: 1000 names a request),
        not a request per key in the store: callers page with `start_after`.
        """

    @abstractmethod
    async def put_small(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write a small object whole and return its new etag."""

    async def put_marker(self, key: str) -> None:
        """Write an empty object that a power cut may lose (never half-write): for
        markers the caller rebuilds when missing. The default is `put_small`; a
        backend whose durable write costs a flush may skip the flush."""
        await self.put_small(key, b"")

    @abstractmethod
    async def get_small(self, key: str) -> tuple[bytes, str]:
        """Read a small object whole, with its etag; `NotFound` if absent."""

    @abstractmethod
    async def check(self) -> None:
        """Raise `StorageUnavailable` unless the backend answers (bucket or folder exists).

        Cheap: `/healthz` calls it.
        """

    async def adopt(self, key: str, source: Storage) -> ObjectInfo:
        """Store the object `key` of `source` (a staged upload) under the same key here.

        The default streams it through `create`, so every guarantee of this
        backend holds; a backend may do better for a source it can reach
        directly (two folders on one disk: a hard link, see `local_path`).
        """
        async with self.create(key) as writer:
            async for block in source.read(key):
                await writer.write(block)
            return await writer.commit()

    async def remove_incomplete(
        self, older_than: float, began: Callable[[str], float | None] = lambda key: None
    ) -> int:
        """Remove writes that neither committed nor aborted (their writer's process died)
        and began more than `older_than` seconds ago; return how many.

        `began(key)` is when the caller knows the write of `key` began (epoch
        seconds; keys made from time-ordered ids carry it); a backend takes the
        later of that and what its store reports, since some stores report
        nothing useful (moto dates every multipart upload 2010-11-10).
        Only incomplete writes: never a committed object. The default removes
        nothing, for stores that expire such writes themselves (a GCS resumable
        session after a week); backends whose leftovers would stay forever (part
        files, S3 multipart uploads) override it.
        """
        return 0

    def local_path(self, key: str) -> Path | None:
        """Where `key` is on this machine's disk, for backends with `Ability.local_files`."""
        return None


def checked_key(key: str) -> str:
    """A key is one plain name: never a path that could leave the storage root."""
    if not key or "/" in key or "\\" in key or key in (".", "..") or "\0" in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


async def check_in_time(storage: Storage, seconds: float) -> None:
    """`storage.check()`, where silence for `seconds` also counts as unavailable."""
    try:
        await asyncio.wait_for(storage.check(), seconds)
    except TimeoutError:
        raise StorageUnavailable(f"storage {storage.url} did not answer in {seconds:g} s") from None


async def read_blocks(
    opener: Callable[[str], IO[bytes]], start: int = 0, end: int | None = None
) -> AsyncIterator[bytes]:
    """Blocks of a file opened by `opener("rb")`, each call in a worker thread (reads block)."""
    f = await asyncio.to_thread(opener, "rb")
    try:
        if start:
            await asyncio.to_thread(f.seek, start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            n = BLOCK_SIZE if remaining is None else min(BLOCK_SIZE, remaining)
            block = await asyncio.to_thread(f.read, n)
            if not block:
                return
            if remaining is not None:
                remaining -= len(block)
            yield block
    finally:
        await asyncio.to_thread(f.close)

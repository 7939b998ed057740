"""Every call to a backend bounded in time, and its failures counted.

`guard(storage, timeout)` wraps the operations of one opened backend in place,
so every backend (a plugin's too) gets both without a line of its own, and
the wrapped object is still the backend itself (its type, abilities and
options unchanged):

- **deadlines**: a call that does not answer within `timeout` seconds raises
  `StorageUnavailable`, so an upload whose store hangs ends in a 503 (its
  writer aborted, nothing kept) instead of holding the client. Per call, not
  per upload: each block written or read, each commit, each record read or
  write has the whole `timeout`. Calls that move or list a whole store's
  worth (`adopt` of a staged upload, `list` without a limit,
  `remove_incomplete`) are bounded by the calls they make, not as a whole.
- **counting**: a call that fails as unavailable (or runs out of time)
  counts once for its operation in `uploadsvc_storage_errors_total`; a
  backend that calls its own operations counts those too, as they failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from ..errors import StorageUnavailable
from ..metrics import STORAGE_ERRORS
from .interface import ObjectInfo, ObjectWriter, Storage

T = TypeVar("T")

#: Calls that answer in one round trip: each gets the deadline.
_BOUNDED = ("size", "delete", "put_small", "put_marker", "get_small", "check")
#: Calls whose length grows with the store or the object: counted only.
_UNBOUNDED = ("adopt", "remove_incomplete")


def guard(storage: Storage, timeout: float) -> Storage:
    """`storage`, each call bounded by `timeout` seconds and its failures counted."""
    calls = _Calls(storage, timeout)
    for name in _BOUNDED:
        setattr(storage, name, calls.wrap(getattr(storage, name), name, timeout))
    for name in _UNBOUNDED:
        setattr(storage, name, calls.wrap(getattr(storage, name), name, None))
    read, create, listing = storage.read, storage.create, storage.list
    list_page = calls.wrap(listing, "list", timeout)
    list_all = calls.wrap(listing, "list", None)

    async def guarded_list(
        prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> list[str]:
        lister = list_all if limit is None else list_page
        return await lister(prefix, start_after=start_after, limit=limit)

    async def guarded_read(
        key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        blocks = read(key, start, end)
        next_block = calls.wrap(blocks.__anext__, "read", timeout)
        try:
            while True:
                try:
                    block = await next_block()
                except StopAsyncIteration:
                    return
                yield block
        finally:
            close = getattr(blocks, "aclose", None)
            if close is not None:  # a reader that stops early closes the backend's
                await close()

    def guarded_create(key: str) -> ObjectWriter:
        return _Writer(create(key), calls)

    storage.list = guarded_list  # type: ignore[method-assign]
    storage.read = guarded_read  # type: ignore[method-assign]
    storage.create = guarded_create  # type: ignore[method-assign]
    return storage


class _Calls:
    """Wraps one backend's calls: its URL for messages, its protocol for the metric."""

    def __init__(self, storage: Storage, timeout: float) -> None:
        self.url = storage.url
        self.backend = storage.url.partition(":")[0]
        self.timeout = timeout

    def wrap(
        self, call: Callable[..., Awaitable[T]], operation: str, timeout: float | None
    ) -> Callable[..., Awaitable[T]]:
        errors = STORAGE_ERRORS.labels(self.backend, operation)
        url = self.url

        @wraps(call)
        async def guarded(*args: Any, **kwargs: Any) -> T:
            try:
                async with asyncio.timeout(timeout):
                    return await call(*args, **kwargs)
            except TimeoutError:
                errors.inc()
                raise StorageUnavailable(
                    f"storage {url} did not answer in {timeout:g} s ({operation})"
                ) from None
            except StorageUnavailable:
                errors.inc()
                raise

        return guarded


class _Writer(ObjectWriter):
    """A backend's writer, each of its calls bounded and counted."""

    def __init__(self, inner: ObjectWriter, calls: _Calls) -> None:
        self._write = calls.wrap(inner.write, "write", calls.timeout)
        self._commit = calls.wrap(inner.commit, "commit", calls.timeout)
        self._abort = calls.wrap(inner.abort, "abort", calls.timeout)
        self._idle = calls.wrap(inner.idle, "idle", calls.timeout)

    async def write(self, block: bytes) -> None:
        await self._write(block)

    async def commit(self) -> ObjectInfo:
        return await self._commit()

    async def abort(self) -> None:
        await self._abort()

    async def idle(self) -> None:
        await self._idle()

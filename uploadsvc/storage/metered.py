"""Counting a backend's failures by operation, for `uploadsvc_storage_errors_total`.

`meter(storage)` wraps the operations of one opened backend in place, so every
backend (a plugin's too) is counted without a line of its own, and the wrapped
object is still the backend itself (its type, abilities and options unchanged).
A call that raises `StorageUnavailable` counts once for its operation; a
backend that calls its own operations counts those too, as they failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from ..errors import StorageUnavailable
from ..metrics import STORAGE_ERRORS
from .interface import ObjectInfo, ObjectWriter, Storage

T = TypeVar("T")

_CALLS = (
    "size",
    "delete",
    "list",
    "put_small",
    "put_marker",
    "get_small",
    "check",
    "adopt",
    "remove_incomplete",
)


def meter(storage: Storage) -> Storage:
    """`storage`, its failures counted under its URL's protocol."""
    backend = storage.url.partition(":")[0]
    for name in _CALLS:
        setattr(storage, name, _counted(getattr(storage, name), backend, name))
    read, create = storage.read, storage.create

    async def counted_read(
        key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            async for block in read(key, start, end):
                yield block
        except StorageUnavailable:
            STORAGE_ERRORS.labels(backend, "read").inc()
            raise

    def counted_create(key: str) -> ObjectWriter:
        return _Writer(create(key), backend)

    storage.read = counted_read  # type: ignore[method-assign]
    storage.create = counted_create  # type: ignore[method-assign]
    return storage


def _counted(
    call: Callable[..., Awaitable[T]], backend: str, operation: str
) -> Callable[..., Awaitable[T]]:
    errors = STORAGE_ERRORS.labels(backend, operation)

    @wraps(call)
    async def counting(*args: Any, **kwargs: Any) -> T:
        try:
            return await call(*args, **kwargs)
        except StorageUnavailable:
            errors.inc()
            raise

    return counting


class _Writer(ObjectWriter):
    """A backend's writer, its failures counted as `write`, `commit` and `abort`."""

    def __init__(self, inner: ObjectWriter, backend: str) -> None:
        self._inner = inner
        self._write = _counted(inner.write, backend, "write")
        self._commit = _counted(inner.commit, backend, "commit")
        self._abort = _counted(inner.abort, backend, "abort")

    async def write(self, block: bytes) -> None:
        await self._write(block)

    async def commit(self) -> ObjectInfo:
        return await self._commit()

    async def abort(self) -> None:
        await self._abort()

    async def idle(self) -> None:
        await self._inner.idle()

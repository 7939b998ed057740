"""Running blocking work beside the event loop without waiting for each call.

A `Lane` runs calls on a worker thread strictly in order, at most one at a
time, and lets the caller go on (receive the next bytes) while the previous
call runs. That overlap is what lets receiving, hashing and writing share two
cores; awaiting each call in turn would serialise them. An error raised by a
call surfaces at the next `submit` or at `drain`.

Lanes run on a pool of their own. Many large uploads at once fill it with
hashing and writing; the default pool stays free for short calls (a record
read, a health check), so those never queue behind bulk bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

BULK = ThreadPoolExecutor(
    max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="uploadsvc-bulk"
)


async def outlast_cancellation(future: asyncio.Future[T]) -> T:
    """Await `future`; if the caller is cancelled meanwhile, let it end first.

    For work that goes on whatever the caller does (a thread, a call on
    another loop): whoever cleans up after the cancellation must find it
    finished. Its own outcome is then dropped; the cancellation propagates.
    """
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it as lost
        raise


#: The longest a settling caller, once cancelled, lets its call run on before
#: it cancels that too and goes on (the store may then hold a leftover the
#: sweep removes).
SETTLE_LIMIT = 10.0


async def on_loop(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, *, settle: bool = False
) -> T:
    """Await `coro` on another event loop (an fsspec library's own IO thread).

    Cancelling the caller cancels the call there too, so deadlines hold (a
    hung store cannot hold a request). A call that changes state is
    `settle`d: a cancelled caller first lets it finish (a part upload or a
    commit still on the wire would otherwise land after the clean-up that
    follows, and stay), for up to `SETTLE_LIMIT`; only a call that outlasts
    that is cancelled too.
    """
    call = _RemoteCall(coro)
    future = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call.run(), loop))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if settle:
            await asyncio.wait([future], timeout=SETTLE_LIMIT)
        if not future.done():
            call.abandon(loop)
        future.add_done_callback(_retrieve)
        raise


class _RemoteCall:
    """A coroutine run on another loop that its caller may abandon at any moment:
    before it starts (it is then closed, never run) or while it runs (its task
    there is cancelled)."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._lock = threading.Lock()
        self._abandoned = False
        self._task: asyncio.Task[Any] | None = None

    async def run(self) -> Any:
        with self._lock:
            if self._abandoned:
                self._coro.close()
                raise asyncio.CancelledError
            self._task = asyncio.current_task()
        return await self._coro

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._abandoned = True
            task = self._task
        if task is not None:
            loop.call_soon_threadsafe(task.cancel)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned call's outcome as seen, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


class Lane:
    """An ordered, one-deep queue of calls into the `BULK` pool."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[Any] | None = None

    async def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start `fn(*args)` once the previous call has finished; do not wait for it."""
        await self.drain()
        self._pending = asyncio.get_running_loop().run_in_executor(BULK, fn, *args)

    async def drain(self) -> None:
        """Wait for the call in flight, re-raising its error.

        A thread cannot be stopped, so if the caller is cancelled meanwhile it
        still waits for the call to end before going: whoever cleans up next
        (removing a part file, say) must not race a write still running.
        """
        pending = self._pending
        if pending is None:
            return
        try:
            await outlast_cancellation(pending)
        finally:
            self._pending = None

    async def cancel(self) -> None:
        """Wait for the call in flight and swallow its error (we are already failing)."""
        with contextlib.suppress(Exception):
            await self.drain()

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


async def on_loop(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, *, settle: bool = False
) -> T:
    """Await `coro` on another event loop (an fsspec library's own IO thread).

    Cancelling the caller cancels the call, so timeouts (health checks,
    start-up) hold; a call that changes state is `settle`d instead: a
    cancelled caller waits for it to end, so the clean-up that follows knows
    what happened (never races a part upload or a commit still on the wire).
    """
    future = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
    return await (outlast_cancellation(future) if settle else future)


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

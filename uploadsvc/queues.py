"""Where background jobs wait: tasks of this process, or a Redis queue for workers
(`redis_queue.py`, imported only when configured).

A queue carries upload ids only; the record stays the truth (`jobs.py`), so
a message lost or delivered twice changes nothing: a duplicate finds the
job held or done, and the sweep of any instance pushes again whatever is
not final and not held. `[queue] url` empty keeps jobs in the service;
`redis://...` puts them on Redis, run by `uploadsvc worker` processes.

"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, Protocol


class JobQueue(Protocol):
    async def open(self) -> None:
        """Connect (or start accepting work); called once before any push."""

    async def check(self, seconds: float) -> None:
        """`StorageUnavailable` unless the queue answers within `seconds` (start-up)."""

    async def push(self, upload_id: str, delay: float = 0.0) -> None:
        """Have the job of `upload_id` run, `delay` seconds from now at the earliest."""

    async def close(self) -> None:
        """Stop taking work and disconnect."""


class LocalQueue:
    """Jobs run as tasks of this process, each id at most once at a time.

    A push for an id that is running already runs it once more afterwards
    (a retry that came due while the failed run was still recording itself).
    """

    def __init__(self, run: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        self._run = run
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def check(self, seconds: float) -> None:
        """Always there: it is this process."""

    async def push(self, upload_id: str, delay: float = 0.0) -> None:
        if delay <= 0:
            self._submit(upload_id)
            return

        def fire() -> None:
            self._timers.discard(timer)
            self._submit(upload_id)

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    async def close(self) -> None:
        """No new work; running jobs are `Jobs.stop`'s to cancel (it releases their leases)."""
        self._open = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _submit(self, upload_id: str) -> None:
        if not self._open:
            return  # shutting down: the sweep of this or another instance takes it
        if upload_id in self._tasks:
            self._again.add(upload_id)
            return
        # A job belongs to no request, even when a request's background task queued
        # it: an empty context keeps that request's id off the job's log lines.
        task = asyncio.create_task(self._run(upload_id), context=contextvars.Context())
        self._tasks[upload_id] = task
        task.add_done_callback(lambda _: self._finished(upload_id))

    def _finished(self, upload_id: str) -> None:
        del self._tasks[upload_id]
        if upload_id in self._again:
            self._again.discard(upload_id)
            self._submit(upload_id)

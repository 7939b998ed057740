"""Watching a request body for a client that stopped sending.

uvicorn has no body read timeout: a client that sends half a body and goes
quiet holds its request, and whatever the server buffered for it, forever.
`watched(timeout, on_stall)` guards the loop that reads one body:

- once the body has sent nothing for about a second while the loop waits for
  it, `on_stall()` runs (once per stall): the receiver hands what it holds in
  memory to storage, so a stalled upload pins almost nothing;
- once it has sent nothing for `timeout` seconds, the loop is interrupted
  with `RequestTimeout` (408) where it waits, and its writer aborts as on any
  other error.

The data path pays two attribute stores per chunk (`received`, `reading`).
A timer per upload ticks once a second at most and compares the byte count
with the last tick's; rescheduling an `asyncio.timeout` for every chunk would
cost a timer-heap operation per chunk instead. The loop is judged idle only
while it waits for the body (`reading`): a slow storage write is not the
client's stall. The timeout fires between `timeout` and `timeout` plus one
tick after the last byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .errors import RequestTimeout

#: Longest tick: how soon a stall is noticed (and pending bytes go to storage).
TICK_SECONDS = 1.0


class BodyWatch:
    """What the receive loop tells the watchdog: bytes so far, and whether it waits."""

    def __init__(self, timeout: float, on_stall: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_stall = on_stall
        #: Bytes received so far; the loop adds each chunk.
        self.received = 0
        #: True while the loop waits for the next chunk.
        self.reading = True
        self.expired = False
        self._loop = asyncio.get_running_loop()
        self._tick_every = min(TICK_SECONDS, timeout / 4)
        self._seen = 0
        self._idle_since = self._loop.time()
        self._stalled = False
        self._deadline: asyncio.Timeout | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, deadline: asyncio.Timeout) -> None:
        self._deadline = deadline
        self._timer = self._loop.call_later(self._tick_every, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # A cancelled timer may stay in the loop's queue until its time: it must not
        # keep the receiver and its writer (and the writer's connection) alive.
        self.on_stall = _nothing
        self._deadline = None

    def _tick(self) -> None:
        now = self._loop.time()
        if self.received != self._seen or not self.reading:
            self._seen = self.received
            self._idle_since = now
            self._stalled = False
        elif now - self._idle_since >= self.timeout:
            assert self._deadline is not None
            self.expired = True
            self._deadline.reschedule(now)  # interrupts the loop where it waits
            return
        elif not self._stalled:
            self._stalled = True
            self.on_stall()
        self._timer = self._loop.call_later(self._tick_every, self._tick)


def _nothing() -> None:
    pass


@asynccontextmanager
async def watched(timeout: float, on_stall: Callable[[], None]) -> AsyncIterator[BodyWatch]:
    """Guard a body's receive loop (see the module docstring)."""
    watch = BodyWatch(timeout, on_stall)
    try:
        async with asyncio.timeout(None) as deadline:
            watch.start(deadline)
            try:
                yield watch
            finally:
                watch.stop()
    except TimeoutError:
        if not watch.expired:
            raise
        raise RequestTimeout(
            f"the request body sent nothing for {timeout:g} s ([limits] body_timeout_seconds)"
        ) from None

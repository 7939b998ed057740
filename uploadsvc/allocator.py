"""Giving memory that stalled uploads let go of back to the system.

When a stalled upload hands its partial block to storage, Python frees the
block, but glibc's malloc keeps freed memory in its heap for reuse, and
holes between live objects are never returned by itself: 200 stalled
uploads that each had 1 MiB pending kept the process at ~1 MiB each after
their blocks were written. `malloc_trim(0)` returns those free pages
(glibc >= 2.8 releases holes inside the heap, not only its top): measured
here, 200 stalled uploads then cost ~0.1 MiB each.

It runs in a thread, at most once per `MIN_INTERVAL` seconds, and only after
a stall hand-over: a streaming upload never pays for it. It walks the heap
(6-60 ms here for a 60-250 MiB heap) holding malloc's locks, which is why it
is neither run on the event loop nor more often. Without glibc (musl, macOS)
this does nothing: freed memory is still reused by later uploads, just not
given back.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable

MIN_INTERVAL = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()
_last = 0.0  # when the last trim started
_due = 0.0  # when the next one is scheduled to (in the past: none is)


def give_back_memory() -> None:
    """Have free heap pages returned to the system soon: now, or `MIN_INTERVAL` after
    the last time, so what later hand-overs free is returned too. Returns at once."""
    global _due
    now = time.monotonic()
    if _TRIM is None or _due >= now:
        return  # one is scheduled; it will see what was freed until then
    _due = max(now, _last + MIN_INTERVAL)
    asyncio.get_running_loop().call_later(_due - now, _start, _TRIM)


def _start(trim: Callable[[int], int]) -> None:
    global _last
    _last = time.monotonic()
    asyncio.get_running_loop().run_in_executor(None, trim, 0)

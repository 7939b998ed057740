"""What a processor plugin author needs, and nothing more.

A plugin is a subclass of `Processor` with its options as a pydantic model::

    class DelayOptions(plugin.Options):
        seconds: float = 5

    class Delay(plugin.Processor[DelayOptions]):
        Options = DelayOptions

        async def process(self, upload: plugin.Upload) -> dict[str, Any]:
            await asyncio.sleep(self.options.seconds)
            return {"slept": self.options.seconds}

`[plugins.<name>]` is validated against `Options` at start-up (an unknown or
wrong option stops it, naming the option). `process` gets an `Upload`: the
record, read-only access to the stored bytes, and two abilities only:
`reject` the upload, and `derive` a file from it. A processor cannot reach
any other upload, nor change or delete this one's bytes.

`finished` is called once an upload is final (completed or failed), for
plugins that tell the world (webhooks); it runs in the background from the
moment the record is final (in no set order with the client's answer), for at
most `FINISHED_TIMEOUT`, and its failures never change the upload. A plugin
overrides `process`, `finished`, or both.

CPU-heavy work (decoding an image) goes through `off_loop`: a bounded pool of
threads, so the event loop keeps serving and a burst of uploads cannot start
a thread each.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Generic, NoReturn, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from .models import UploadRecord

__all__ = [
    "DerivedWriter",
    "Options",
    "Processor",
    "Rejection",
    "Upload",
    "UploadRecord",
    "off_loop",
]


class Options(BaseModel):
    """Base of a plugin's options: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=Options)
T = TypeVar("T")


class Rejection(Exception):
    """Raised by `Upload.reject`: the upload is refused, not broken."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DerivedWriter(Protocol):
    """Where a derived file's bytes go; committed whole when its block ends cleanly."""

    async def write(self, data: bytes, /) -> None: ...


class Upload(Protocol):
    """One stored upload as a processor sees it."""

    @property
    def record(self) -> UploadRecord:
        """The record so far (status `processing`); a copy, changing it changes nothing."""
        ...

    def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The stored bytes from `start` to `end` (exclusive), streamed in blocks."""
        ...

    def reject(self, reason: str) -> NoReturn:
        """Refuse the upload: it ends `failed` with `reason`, its bytes and derived
        files are removed, and the blocking path answers 422 `rejected`.

        It raises `Rejection`: an `except Exception` around it would swallow it.
        """
        ...

    def derive(self, name: str, content_type: str) -> AbstractAsyncContextManager[DerivedWriter]:
        """Write a file made from the upload (`thumbnail`), kept beside it.

        `name` is lowercase letters, digits, `-` and `_` (at most 64). The file
        becomes visible, under `GET /uploads/{id}/derived/{name}` and in the
        record's `derived`, once the upload completes; an error inside the
        block leaves nothing. Writing a name again replaces the file.
        """
        ...


class Processor(Generic[OptionsT]):
    """Base of every processor plugin; see the module docstring."""

    #: The options model; `[plugins.<name>]` is validated against it.
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        """Work on a stored upload; the result (JSON-ready) lands in `results.<name>`."""
        return {}

    async def finished(self, record: UploadRecord) -> None:
        """Called once the upload is final (completed or failed)."""

    async def close(self) -> None:
        """Release what the plugin holds (connections); called at shutdown."""


#: The longest a `finished` hook may run (a plugin's own retries included).
FINISHED_TIMEOUT = 900.0

#: Threads for plugins' CPU work, bounded: work beyond it waits its turn.
_CPU = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="uploadsvc-plugin")


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Run `function(*args)` on the plugins' thread pool; the loop stays free.

    Cancelled (the processor's timeout) before it starts, it never runs;
    once started it runs to its end, taking one of the pool's threads, and
    its result is dropped.
    """
    return await asyncio.get_running_loop().run_in_executor(_CPU, function, *args)

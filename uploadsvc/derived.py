"""Files a processor derives from an upload: `derived.<id>.<name>` beside it.

The key starts with the owner's id, so the upload's files are one listing of
a prefix away (deletion finds them all, even those no record names yet) and
the leftovers sweep tells an orphan from the rest by its id, as it does for
the bytes. A derived file is written through the storage's own writer (whole
or nothing); it becomes part of the upload when the record that names it is
written, and an orphan (its processing failed, or the process died) is
removed with the upload or by the sweep.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .storage import ObjectWriter, Storage

PREFIX = "derived."
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def derived_key(upload_id: str, name: str) -> str:
    return f"{PREFIX}{upload_id}.{name}"


def owner_of(key: str) -> str:
    """The upload id a `derived.` key belongs to (what follows it may be anything)."""
    return key[len(PREFIX) :].partition(".")[0]


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"derived file name {name!r}: use 1-64 lowercase letters, digits, '-' or '_'"
        )
    return name


@asynccontextmanager
async def writing(storage: Storage, upload_id: str, name: str) -> AsyncIterator[ObjectWriter]:
    """A writer committed when the block ends cleanly, aborted (nothing kept) otherwise."""
    async with storage.create(derived_key(upload_id, check_name(name))) as writer:
        yield writer
        await writer.commit()


async def remove_all(storage: Storage, upload_id: str) -> None:
    """Every derived file of an upload, named in its record or not (idempotent)."""
    for key in await storage.list(f"{PREFIX}{upload_id}."):
        await storage.delete(key)

"""Upload records: `<id>.json` beside `<id>` in the same storage.

The record is the truth about an upload; no process keeps its own copy
between requests, so any instance sharing the storage can answer for any
upload. Records are written whole. Creation is create-if-absent, and every
change is a compare-and-swap on the record's etag (`change`), so two
instances cannot both advance the same upload: each change is computed from
the record as it is, and a writer that raced re-reads and decides again.

Two kinds of empty marker objects make the two questions asked of all
records cheap, each answered by one listing of a prefix:

- `index.<inverted id>`, one per record: ids sort by creation time, and
  each hex digit inverted (0 <-> f) makes ascending listings (the only
  kind stores offer) newest first, so a page of N records costs one listing
  of N names and N reads, however many records there are;
- `active.<id>`, while an upload is not final: the sweep that resumes
  abandoned work reads only the records that may need it.

Markers are written before their record and removed after it (after it
became final, for `active.`): a marker may outlive its reason, and is then
skipped and removed by the leftovers sweep, but a record never lacks one.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence

from .errors import Conflict, NotFound, PreconditionFailed
from .models import ID_PATTERN, StoredRecord
from .storage import Storage

_SUFFIX = ".json"
INDEX = "index."
ACTIVE = "active."
_ID = re.compile(ID_PATTERN)
_CAS_ATTEMPTS = 12
_CAS_PAUSE = 0.005  # seconds; doubles with each lost race, up to a quarter second


def record_key(upload_id: str) -> str:
    return f"{upload_id}{_SUFFIX}"


def active_key(upload_id: str) -> str:
    return f"{ACTIVE}{upload_id}"


def index_key(upload_id: str) -> str:
    return f"{INDEX}{_invert(upload_id)}"


def indexed_id(key: str) -> str:
    """The upload id of an `index.` key."""
    return _invert(key[len(INDEX) :])


def _invert(hex_digits: str) -> str:
    return hex_digits.translate(_INVERTED)


_INVERTED = str.maketrans("0123456789abcdef", "fedcba9876543210")


Edit = Callable[[StoredRecord], StoredRecord]
#: Hears of every record created (before None), status moved, or deleted (both None);
#: called after the write, so it must not raise.
Listener = Callable[[str, StoredRecord | None, StoredRecord | None], None]


class Records:
    """The records of one storage; every method reads or writes the backend (no cache)."""

    def __init__(self, storage: Storage, listeners: Sequence[Listener] = ()) -> None:
        self.storage = storage
        #: Called after each write that creates, moves (a new status) or deletes a
        #: record: `(id, before, after)` (the log's state lines in `logs.py`, the
        #: plugins told of final uploads in `service.py`).
        self.listeners = tuple(listeners)

    async def create(self, record: StoredRecord) -> None:
        # The index entry may be lost to a power cut (the leftovers pass at
        # start-up writes it again); the `active.` marker may not.
        await self.storage.put_marker(index_key(record.id))
        if not record.status.final:
            await self.storage.put_small(active_key(record.id), b"")
        await self.storage.put_small(record_key(record.id), _dump(record), if_none_match=True)
        self._changed(record.id, None, record)

    async def get(self, upload_id: str) -> StoredRecord:
        return (await self._get(upload_id))[0]

    async def change(self, upload_id: str, edit: Edit) -> StoredRecord:
        """Apply `edit` to the record as it is now, atomically.

        `edit` gets the current record and returns the new one (or raises, say
        `Conflict`, when the change no longer makes sense); it may run several
        times, once per lost race. A status move that `Status.can_become`
        does not allow raises `Conflict`. `NotFound` if the record is gone.
        """
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                # Lost a race: wait a little, at random, or two writers in step
                # (a renewal against a step, two instances) keep colliding.
                await asyncio.sleep(random.uniform(0, min(_CAS_PAUSE * 2**attempt, 0.25)))
            record, etag = await self._get(upload_id)
            updated = edit(record)
            if not record.status.can_become(updated.status):
                raise Conflict(f"upload {upload_id} is {record.status}, not {updated.status}")
            try:
                await self.storage.put_small(record_key(upload_id), _dump(updated), if_match=etag)
            except PreconditionFailed:
                continue
            if updated.status is not record.status:
                self._changed(upload_id, record, updated)
            if updated.status.final:
                await self.storage.delete(active_key(upload_id))
            return updated
        raise Conflict(f"upload {upload_id} is being changed by someone else")

    async def active(self) -> list[str]:
        """Ids of uploads that were not final when last written (see the module docstring)."""
        keys = await self.storage.list(ACTIVE)
        return [k[len(ACTIVE) :] for k in keys if _ID.fullmatch(k[len(ACTIVE) :])]

    async def forget_active(self, upload_id: str) -> None:
        """Remove a marker that outlived its reason (final or missing record)."""
        await self.storage.delete(active_key(upload_id))

    async def page(self, limit: int, cursor: str | None) -> tuple[list[StoredRecord], str | None]:
        """Records newest first, `limit` at a time, after `cursor` (the last id seen).

        One listing of at most `limit + 1` index names, then the records in
        parallel; an index entry whose record is gone (deleted meanwhile) is
        skipped, so a page may hold fewer than `limit`.
        """
        after = index_key(cursor) if cursor else ""
        keys = await self.storage.list(INDEX, start_after=after, limit=limit + 1)
        ids = [indexed_id(k) for k in keys[:limit]]
        found = await asyncio.gather(*(self._get_or_none(i) for i in ids))
        items = [r for r in found if r is not None]
        return items, (ids[-1] if len(keys) > limit else None)

    async def delete(self, upload_id: str) -> None:
        await self.storage.delete(record_key(upload_id))
        self._changed(upload_id, None, None)
        await self.storage.delete(active_key(upload_id))
        await self.storage.delete(index_key(upload_id))

    def _changed(
        self, upload_id: str, before: StoredRecord | None, after: StoredRecord | None
    ) -> None:
        for listener in self.listeners:
            listener(upload_id, before, after)

    async def _get(self, upload_id: str) -> tuple[StoredRecord, str]:
        if not _ID.fullmatch(upload_id):
            raise NotFound(f"no upload {upload_id!r}")
        try:
            data, etag = await self.storage.get_small(record_key(upload_id))
        except NotFound:
            raise NotFound(f"no upload {upload_id!r}") from None
        return StoredRecord.model_validate_json(data), etag

    async def _get_or_none(self, upload_id: str) -> StoredRecord | None:
        """A listed record may be deleted before it is read: skip it."""
        try:
            return await self.get(upload_id)
        except NotFound:
            return None


def _dump(record: StoredRecord) -> bytes:
    return record.model_dump_json().encode()

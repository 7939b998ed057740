"""Upload records: `<id>.json` beside `<id>` in the same storage.

The record is the truth about an upload; no process keeps its own copy
between requests, so any instance sharing the storage can answer for any
upload. Records are written whole. Creation is create-if-absent, and every
status change is a compare-and-swap on the record's etag, so two instances
cannot both advance the same upload: the loser sees `Conflict`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from typing import Any

from .errors import Conflict, NotFound, PreconditionFailed
from .models import ID_PATTERN, Status, UploadRecord
from .storage import Storage

_SUFFIX = ".json"
_ID = re.compile(ID_PATTERN)
_CAS_ATTEMPTS = 5


def record_key(upload_id: str) -> str:
    return f"{upload_id}{_SUFFIX}"


class Records:
    """The records of one storage; every method reads or writes the backend (no cache)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def create(self, record: UploadRecord) -> None:
        await self.storage.put_small(record_key(record.id), _dump(record), if_none_match=True)

    async def get(self, upload_id: str) -> UploadRecord:
        return (await self._get(upload_id))[0]

    async def transition(
        self, upload_id: str, allowed_from: Collection[Status], **changes: Any
    ) -> UploadRecord:
        """Apply `changes` if the record's status is in `allowed_from`, atomically.

        Re-reads and retries when another writer got in between; raises
        `Conflict` when the status no longer allows the change.
        """
        unknown = changes.keys() - UploadRecord.model_fields.keys()
        if unknown:
            raise TypeError(f"not record fields: {sorted(unknown)}")
        for _ in range(_CAS_ATTEMPTS):
            record, etag = await self._get(upload_id)
            if record.status not in allowed_from:
                raise Conflict(f"upload {upload_id} is {record.status}")
            updated = UploadRecord.model_validate({**record.model_dump(), **changes})
            try:
                await self.storage.put_small(record_key(upload_id), _dump(updated), if_match=etag)
            except PreconditionFailed:
                continue
            return updated
        raise Conflict(f"upload {upload_id} is being changed by someone else")

    async def page(self, limit: int, cursor: str | None) -> tuple[list[UploadRecord], str | None]:
        """Records newest first, `limit` at a time, after `cursor` (the last id seen)."""
        ids = sorted((k[: -len(_SUFFIX)] for k in await self.storage.list(_SUFFIX)), reverse=True)
        ids = [i for i in ids if _ID.match(i) and (cursor is None or i < cursor)]
        chosen = ids[:limit]
        found = await asyncio.gather(*(self._get_or_none(i) for i in chosen))
        items = [r for r in found if r is not None]
        next_cursor = chosen[-1] if len(ids) > limit else None
        return items, next_cursor

    async def delete(self, upload_id: str) -> None:
        await self.storage.delete(record_key(upload_id))

    async def _get(self, upload_id: str) -> tuple[UploadRecord, str]:
        if not _ID.match(upload_id):
            raise NotFound(f"no upload {upload_id!r}")
        try:
            data, etag = await self.storage.get_small(record_key(upload_id))
        except NotFound:
            raise NotFound(f"no upload {upload_id!r}") from None
        return UploadRecord.model_validate_json(data), etag

    async def _get_or_none(self, upload_id: str) -> UploadRecord | None:
        """A listed record may be deleted before it is read: skip it."""
        try:
            return await self.get(upload_id)
        except NotFound:
            return None


def _dump(record: UploadRecord) -> bytes:
    return record.model_dump_json().encode()

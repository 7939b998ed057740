"""One upload from first byte to final record, for both paths.

    receive (streaming) -> commit (storage) -> record (records) -> job (jobs) -> process (pipeline)

The blocking path receives straight into the storage backend, records the
upload and answers once the pipeline has run. The background path receives
into staging (durable: fsynced, or a completed object in a bucket), records
the upload as `queued` and answers; a job (`jobs.py`) then moves the bytes
into the backend and runs the same pipeline code. The two differ only in
where the bytes land first and in when the answer is sent.

A rejected or interrupted upload leaves nothing: the writer aborts, and a
record is only written once its bytes are committed. State lives in the
records, never here: jobs are handed an id and read the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from . import derived
from .admission import Admission
from .errors import NotFound, ServiceError
from .logs import upload_changed
from .models import Job, Status, StoredRecord, new_id, now
from .pipeline import Pipeline, ProcessingFailed, ProcessingRejected
from .records import Records
from .storage import Storage
from .streaming import Received, check_body_length, receive_file

log = logging.getLogger(__name__)


class UploadService:
    """Both upload paths over one storage, one staging area and one pipeline.

    Holds no per-upload state between calls, so any instance can run any step.
    The steps a job runs (`store_staged`, `process`, `discard`) are idempotent:
    run again after a crash at any point, they end in the same object and the
    same record.
    """

    def __init__(
        self,
        storage: Storage,
        staging: Storage,
        pipeline: Pipeline,
        max_upload_bytes: int,
        *,
        body_timeout: float = 60.0,
        admission: Admission | None = None,
    ) -> None:
        self.storage = storage
        self.staging = staging
        self.records = Records(storage, listeners=(upload_changed, self._announce_final))
        self.pipeline = pipeline
        self.limit = max_upload_bytes
        self.body_timeout = body_timeout
        self.admission = admission or Admission()

    async def receive_blocking(
        self,
        body: AsyncIterator[bytes],
        content_type: str | None,
        content_length: int | None,
        lease: Callable[[], Job],
    ) -> StoredRecord:
        """Store and record; the record is `processing`, held by a `lease()` taken as
        it is written, when a pipeline is configured (the caller runs it), else
        `completed`. (Taken then, not before the body: a slow body would outlast it.)"""
        upload_id, started = new_id(), now()
        received = await self._receive(self.storage, upload_id, body, content_type, content_length)
        if self.pipeline:
            return await self._record(
                self.storage, upload_id, received, Status.processing, started, lease()
            )
        return await self._record(self.storage, upload_id, received, Status.completed, started)

    async def receive_background(
        self, body: AsyncIterator[bytes], content_type: str | None, content_length: int | None
    ) -> StoredRecord:
        """Stage durably and record as `queued`; a job does the rest."""
        upload_id, started = new_id(), now()
        received = await self._receive(
            self.staging, upload_id, body, content_type, content_length, also=self.storage
        )
        return await self._record(self.staging, upload_id, received, Status.queued, started)

    def _announce_final(
        self, upload_id: str, before: StoredRecord | None, after: StoredRecord | None
    ) -> None:
        """Plugins hear of each upload once, when it becomes final (`plugin.finished`)."""
        if after is not None and after.status.final and (before is None or not before.status.final):
            self.pipeline.announce(after)

    async def store_staged(self, record: StoredRecord) -> None:
        """Move the staged bytes into storage, unless an earlier run already did."""
        try:
            if await self.storage.size(record.id) == record.size:
                return  # committed objects are whole: this is the earlier run's copy
        except NotFound:
            pass
        await self.storage.adopt(record.id, self.staging)

    async def process(self, record: StoredRecord) -> dict[str, Any]:
        """Run the pipeline: the changes that end the upload (`completed` or `failed`).

        A failed run leaves no derived file; the bytes of a rejected upload go
        once its record says so (`finish`).
        """
        try:
            outcome = await self.pipeline.run(record, self.storage)
        except ProcessingFailed as e:
            rejected = isinstance(e, ProcessingRejected)
            (log.info if rejected else log.warning)("upload %s: %s", record.id, e)
            await derived.remove_all(self.storage, record.id)
            return {"status": Status.failed, "error": str(e), "rejected": rejected}
        return {
            "status": Status.completed,
            "results": outcome.results,
            "derived": {n: f"/uploads/{record.id}/derived/{n}" for n in outcome.derived},
            "derived_types": outcome.derived,
        }

    async def finish(self, record: StoredRecord) -> None:
        """What a final record no longer needs: the staged copy, and every byte of a
        rejected upload (never served meanwhile: only `completed` uploads are)."""
        if record.rejected:
            await self.discard(record.id)
        else:
            await self.staging.delete(record.id)

    async def derived_file(self, upload_id: str, name: str) -> tuple[StoredRecord, str, int]:
        """The record, content type and size of a derived file a completed upload names."""
        record = await self.records.get(upload_id)
        content_type = record.derived_types.get(name)
        if record.status is not Status.completed or content_type is None:
            raise NotFound(f"upload {upload_id} has no derived file {name!r}")
        return record, content_type, await self.storage.size(derived.derived_key(upload_id, name))

    def read_derived(self, upload_id: str, name: str) -> AsyncIterator[bytes]:
        return self.storage.read(derived.derived_key(upload_id, name))

    async def discard(self, upload_id: str) -> None:
        """Remove every byte of an upload and of its derived files (idempotent): what
        DELETE, a stopped job and a rejection need."""
        await derived.remove_all(self.storage, upload_id)
        await self.storage.delete(upload_id)
        await self.staging.delete(upload_id)

    async def _receive(
        self,
        target: Storage,
        upload_id: str,
        body: AsyncIterator[bytes],
        content_type: str | None,
        content_length: int | None,
        also: Storage | None = None,
    ) -> Received:
        """Receive into `target` once admitted: a free slot, and room on `target` and on
        `also` (where staged bytes end up)."""
        check_body_length(content_length, self.limit)
        places = (target,) if also is None else (target, also)
        async with (
            self.admission.admit(upload_id, *places),
            target.create(upload_id) as writer,
        ):
            received = await receive_file(
                body, content_type, self.limit, writer, idle_timeout=self.body_timeout
            )
            await writer.commit()
        return received

    async def _record(
        self,
        holder: Storage,
        upload_id: str,
        received: Received,
        status: Status,
        created_at: datetime,
        job: Job | None = None,
    ) -> StoredRecord:
        """Write the first record; if that fails, remove the committed bytes."""
        record = StoredRecord(
            id=upload_id,
            filename=received.filename,
            size=received.size,
            content_type=received.content_type,
            sha256=received.sha256,
            status=status,
            created_at=created_at,
            completed_at=now() if status.final else None,
            url=f"/uploads/{upload_id}/content",
            job=job,
        )
        try:
            await self.records.create(record)
        except BaseException:
            await asyncio.shield(self._unrecord(holder, upload_id))
            raise
        return record

    async def _unrecord(self, holder: Storage, upload_id: str) -> None:
        """Undo a record that could not be written: a write that timed out may still
        land, so its markers and itself go too. Whatever the store refuses now is the
        leftovers sweep's (everything here is keyed by the upload's id)."""
        with contextlib.suppress(ServiceError):
            await holder.delete(upload_id)
            await self.records.delete(upload_id)

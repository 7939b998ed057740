"""One upload from first byte to final record, for both paths.

    receive (streaming) -> commit (storage) -> record (records) -> process (pipeline)

The blocking path receives straight into the storage backend and answers
when the pipeline has run. The background path receives into the local
staging area (durable, fsynced), records the upload as `queued` and answers;
`complete_background` then moves the bytes into the backend and runs the same
pipeline code. The two differ only in where the bytes land first and in when
the answer is sent.

A rejected or interrupted upload leaves nothing: the writer aborts, and a
record is only written once its bytes are committed. State lives in the
records, never here: the background job is handed an id and reads the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from .errors import Conflict, NotFound, ServiceError, StorageUnavailable
from .models import Status, UploadRecord, new_id, now
from .pipeline import Pipeline, ProcessingFailed, StoredUpload
from .records import Records
from .storage import Storage
from .storage.files import LocalStorage
from .streaming import Received, check_body_length, receive_file

log = logging.getLogger(__name__)

FINAL = frozenset({Status.completed, Status.failed})


class UploadService:
    """Both upload paths over one storage, one staging folder and one pipeline.

    Holds no per-upload state between calls, so any instance can run any step.
    """

    def __init__(
        self,
        storage: Storage,
        staging: LocalStorage,
        pipeline: Pipeline,
        max_upload_bytes: int,
    ) -> None:
        self.storage = storage
        self.staging = staging
        self.records = Records(storage)
        self.pipeline = pipeline
        self.limit = max_upload_bytes
        #: Pauses before retrying a failed move from staging into storage.
        self.retry_delays: tuple[float, ...] = (0.5, 2.0)

    async def upload_blocking(
        self, body: AsyncIterator[bytes], content_type: str | None, content_length: int | None
    ) -> UploadRecord:
        """Store, record and process; return the final record."""
        upload_id, started = new_id(), now()
        received = await self._receive(self.storage, upload_id, body, content_type, content_length)
        status = Status.processing if self.pipeline else Status.completed
        record = await self._record(self.storage, upload_id, received, status, started)
        return await self._process(record) if self.pipeline else record

    async def upload_background(
        self, body: AsyncIterator[bytes], content_type: str | None, content_length: int | None
    ) -> UploadRecord:
        """Stage durably and record as queued; `complete_background` does the rest."""
        upload_id, started = new_id(), now()
        received = await self._receive(self.staging, upload_id, body, content_type, content_length)
        return await self._record(self.staging, upload_id, received, Status.queued, started)

    async def complete_background(self, upload_id: str) -> None:
        """The background job: move the staged bytes into storage, then process.

        Takes only the id (FastAPI once closed request files before background
        tasks ran, fastapi#10857): everything else is read from the record.
        If even the record cannot be advanced (storage away), the job stops
        and leaves record and staged bytes as they are: nothing is lost.
        """
        try:
            await self._complete_background(upload_id)
        except ServiceError as e:
            log.error("upload %s: background job stopped, upload kept as it is: %s", upload_id, e)

    async def _complete_background(self, upload_id: str) -> None:
        try:
            record = await self.records.transition(
                upload_id, {Status.queued}, status=Status.storing
            )
        except (NotFound, Conflict):
            return  # deleted meanwhile, or another instance took it
        try:
            await self._store_staged(upload_id)
        except (ServiceError, OSError) as e:
            # The staged bytes stay where they are: the upload was accepted.
            reason = e.detail if isinstance(e, ServiceError) else str(e)
            log.error("upload %s: storing failed: %s", upload_id, reason)
            await self._settle(record, Status.failed, error=f"storing failed: {reason}")
            return
        if self.pipeline:
            record = await self._settle(record, Status.processing)
            await self._process(record)
        else:
            await self._settle(record, Status.completed)
        await self.staging.delete(upload_id)

    async def delete(self, upload_id: str) -> None:
        """Delete a settled upload; `Conflict` while it is still moving.

        `completed` and `failed` are final, so nothing else can change the
        upload between this check and the deletes; deleting one in flight
        would race the job that is storing or processing it.
        """
        record = await self.records.get(upload_id)  # NotFound for unknown ids
        if record.status is Status.queued:
            # Not started yet: settle it first, so the job finds it taken and stops.
            record = await self._settle(record, Status.failed, error="deleted before storing")
        if record.status not in FINAL:
            raise Conflict(
                f"upload {upload_id} is {record.status.value}; delete it once it settles"
            )
        await self.storage.delete(upload_id)
        await self.staging.delete(upload_id)
        await self.records.delete(upload_id)

    async def _store_staged(self, upload_id: str) -> None:
        """Move the staged bytes into storage, retrying a backend that is briefly away."""
        for delay in (*self.retry_delays, None):
            try:
                await self.storage.put_local_file(upload_id, self.staged_path(upload_id))
                return
            except StorageUnavailable as e:
                if delay is None:
                    raise
                log.warning("upload %s: storing failed, retrying in %g s: %s", upload_id, delay, e)
                await asyncio.sleep(delay)

    def staged_path(self, upload_id: str) -> Path:
        return Path(self.staging.path(upload_id))

    async def _receive(
        self,
        target: Storage,
        upload_id: str,
        body: AsyncIterator[bytes],
        content_type: str | None,
        content_length: int | None,
    ) -> Received:
        check_body_length(content_length, self.limit)
        async with target.create(upload_id) as writer:
            received = await receive_file(body, content_type, self.limit, writer)
            await writer.commit()
        return received

    async def _record(
        self,
        holder: Storage,
        upload_id: str,
        received: Received,
        status: Status,
        created_at: datetime,
    ) -> UploadRecord:
        """Write the first record; if that fails, remove the committed bytes."""
        record = UploadRecord(
            id=upload_id,
            filename=received.filename,
            size=received.size,
            content_type=received.content_type,
            sha256=received.sha256,
            status=status,
            created_at=created_at,
            completed_at=now() if status is Status.completed else None,
            url=f"/uploads/{upload_id}/content",
        )
        try:
            await self.records.create(record)
        except BaseException:
            await asyncio.shield(holder.delete(upload_id))
            raise
        return record

    async def _process(self, record: UploadRecord) -> UploadRecord:
        try:
            results = await self.pipeline.run(StoredUpload(record, self.storage))
        except ProcessingFailed as e:
            log.warning("upload %s: %s", record.id, e)
            return await self._settle(record, Status.failed, error=str(e))
        return await self._settle(record, Status.completed, results=results)

    async def _settle(
        self, record: UploadRecord, status: Status, **changes: object
    ) -> UploadRecord:
        """Advance the record from the status it has now."""
        if status in (Status.completed, Status.failed):
            changes["completed_at"] = now()
        return await self.records.transition(record.id, {record.status}, status=status, **changes)

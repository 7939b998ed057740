"""Background work with owners and leases: an accepted upload always finishes.

Every upload that is not final is a job keyed by its id. Its record says
who works on it (`Job.owner`) and until when (`Job.lease_until`):

- **claim**: an instance takes a job with a conditional write on the record,
  only if nobody holds a live lease and no retry is pending (`claimable`);
- **renew**: while it works it extends the lease every third of
  `lease_seconds`, so a long upload into S3 or a slow processor keeps it;
  finding the record gone (deleted) or taken stops the work at once;
- **advance**: the steps the record still needs, each idempotent
  (`UploadService.store_staged`, then `process`), each status change a
  conditional write that only the owner may make;
- **release**: the final status clears the lease; a failed step clears it
  with `retry_at` set (exponential backoff with jitter) and counts an
  attempt; after `attempts` the upload ends `failed`, its staged bytes kept
  until it is deleted; a shutdown clears it so another instance takes over
  at once.

An instance that dies simply stops renewing: its leases expire and the sweep
of any instance (`sweep`, at start-up and every `sweep_interval`) takes the
jobs over. Wall clocks of the instances are assumed to agree to well within
a lease (NTP); the lease, not the clock, is what makes two owners impossible,
since each write is conditional on the record being unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import JobsSettings
from .errors import Conflict, NotFound, ServiceError, StorageUnavailable
from .leftovers import remove_leftovers
from .models import Job, Status, StoredRecord, age_seconds, now
from .queues import JobQueue, LocalQueue
from .service import UploadService

log = logging.getLogger(__name__)

#: Jobs one instance runs at once; more wait unclaimed, so their leases are
#: not ticking while they queue.
CONCURRENT_JOBS = 8


class LeaseLost(Exception):
    """The record changed hands (or was deleted) while this instance worked on it."""


class _NotYet(Exception):
    """The job waits for a retry this many seconds from now."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class _Stop(Exception):
    """Why a local job was cancelled: `deleted` (DELETE) or `shutdown`."""


class Jobs:
    """Claims, runs, retries and sweeps the jobs of one instance."""

    def __init__(
        self, service: UploadService, settings: JobsSettings, queue: JobQueue | None = None
    ) -> None:
        self.service = service
        self.records = service.records
        self.settings = settings
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.sweep_interval = max(0.1, min(settings.lease_seconds / 2, 15.0))
        #: Where jobs wait: tasks of this process unless a Redis queue is configured.
        self.queue = queue or LocalQueue(self.run)
        self._running: dict[str, asyncio.Task[Any]] = {}  # jobs being worked on here
        self._stopping: dict[str, str] = {}  # upload id -> why its task was cancelled
        self._slots = asyncio.Semaphore(CONCURRENT_JOBS)
        self._sweeper: asyncio.Task[None] | None = None

    # Lifecycle.

    async def start(self) -> None:
        """Sweep now (resume what a previous run left) and every `sweep_interval`."""
        await self.queue.open()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop sweeping; cancel local jobs, releasing their leases for another instance."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.queue.close()
        tasks = list(self._running.items())
        for upload_id, task in tasks:
            self._stopping[upload_id] = "shutdown"
            task.cancel()
        await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)

    # Entry points.

    async def nudge(self, upload_id: str) -> None:
        """Queue the job of a new upload: a request's background task hands over the id only."""
        await self.queue.push(upload_id)

    async def run_held(self, record: StoredRecord) -> StoredRecord:
        """Finish an upload whose record this instance created already holding
        (the blocking path's processing), in the caller's task."""
        task = asyncio.current_task()
        assert task is not None
        self._running[record.id] = task
        try:
            return await self._hold(record)
        except _Stop as stop:
            if str(stop) == "deleted":
                raise NotFound(f"upload {record.id} was deleted while it was processed") from None
            raise asyncio.CancelledError from None
        finally:
            self._running.pop(record.id, None)

    def new_lease(self) -> Job:
        return Job(owner=self.owner, lease_until=instant() + self.lease)

    async def delete(self, upload_id: str) -> None:
        """Delete an upload in any status; a job working on it stops.

        The record goes first: every job's next conditional write or lease
        renewal then fails, so a job elsewhere stops within a third of a lease
        and removes what it wrote meanwhile; one running here stops at once.
        """
        await self.records.get(upload_id)  # NotFound for unknown ids
        await self.records.delete(upload_id)
        task = self._running.get(upload_id)
        if task is not None and task is not asyncio.current_task():
            self._stopping[upload_id] = "deleted"
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.service.discard(upload_id)

    async def sweep(self) -> None:
        """Resume what nobody holds: queued uploads, expired leases, due retries."""
        moment = instant()
        for upload_id in await self.records.active():
            try:
                record = await self.records.get(upload_id)
            except NotFound:
                if age_seconds(upload_id) > self.settings.grace_seconds:
                    await self.records.forget_active(upload_id)
                continue
            if record.status.final:
                await self.records.forget_active(upload_id)
            elif claimable(record, moment):
                await self.queue.push(upload_id)

    # The work.

    async def run(self, upload_id: str) -> None:
        """The job: claim, advance, release; never raises (the record says what happened)."""
        task = asyncio.current_task()
        assert task is not None
        self._running[upload_id] = task
        try:
            await self._run(upload_id)
        finally:
            if self._running.get(upload_id) is task:
                del self._running[upload_id]

    async def _run(self, upload_id: str) -> None:
        async with self._slots:
            try:
                record = await self.records.change(upload_id, self._claim)
            except (NotFound, Conflict, LeaseLost):
                return  # deleted, final, or someone else's
            except _NotYet as wait:
                await self.queue.push(upload_id, wait.seconds)
                return
            except ServiceError as e:
                log.warning("upload %s: cannot claim its job now: %s", upload_id, e.detail)
                return  # the sweep tries again
            with contextlib.suppress(_Stop):
                await self._hold(record)

    async def _hold(self, record: StoredRecord) -> StoredRecord:
        """Advance a claimed record under a renewed lease; handle every way out.

        Raises `_Stop` when this instance cancelled the work (DELETE, shutdown),
        after cleaning up; every other outcome is written to the record.
        """
        try:
            async with self._renewing(record.id):
                return await self._advance(record)
        except LeaseLost as e:
            deleted = not await self._exists(record.id)
            if deleted:
                await self.service.discard(record.id)  # what this job wrote after the DELETE
            log.info("upload %s: job stopped (%s): %s", record.id, "deleted" * deleted, e)
            return record
        except _Stop as stop:
            if str(stop) == "deleted":
                await asyncio.shield(self.service.discard(record.id))
            else:
                await self._release(record.id)
            raise
        except ServiceError as e:
            return await self._retry_or_fail(record, e.detail)
        except Exception as e:  # a bug, not the user's storage: count it like a failure
            log.exception("upload %s: job failed", record.id)
            return await self._retry_or_fail(record, f"internal error ({type(e).__name__})")

    async def _advance(self, record: StoredRecord) -> StoredRecord:
        if record.status is Status.storing:
            await self.service.store_staged(record)
            after = Status.processing if self.service.pipeline else Status.completed
            record = await self._move(record.id, status=after)
        if record.status is Status.processing:
            record = await self._move(record.id, **await self.service.process(record))
        if record.status.final:
            await self.service.release_staged(record.id)
        return record

    async def _move(self, upload_id: str, **changes: Any) -> StoredRecord:
        """A status change only the lease holder may make; a final one releases the job."""

        status: Status = changes["status"]
        # A new step starts counting its own attempts; a final status ends the job.
        after = {"job": None, "completed_at": now()} if status.final else {"attempts": 0}

        def edit(r: StoredRecord) -> StoredRecord:
            self._check_owner(r)
            return StoredRecord.model_validate({**r.model_dump(), **changes, **after})

        return await self.records.change(upload_id, edit)

    async def _retry_or_fail(self, record: StoredRecord, reason: str) -> StoredRecord:
        """Count the attempt; retry later, or end `failed` once attempts run out."""
        attempt = record.attempts + 1
        delay = backoff(self.settings.backoff_seconds, attempt)
        last = attempt >= self.settings.attempts
        step = "processing" if record.status is Status.processing else "storing"

        def edit(r: StoredRecord) -> StoredRecord:
            self._check_owner(r)
            if last:
                return r.model_copy(
                    update={
                        "status": Status.failed,
                        "error": f"{step} failed after {attempt} attempts: {reason}",
                        "attempts": attempt,
                        "completed_at": now(),
                        "job": None,
                    }
                )
            return r.model_copy(
                update={
                    "attempts": attempt,
                    "job": Job(retry_at=instant() + timedelta(seconds=delay)),
                }
            )

        log.warning("upload %s: %s failed (attempt %d): %s", record.id, step, attempt, reason)
        try:
            record = await self.records.change(record.id, edit)
        except (ServiceError, LeaseLost) as e:
            log.warning("upload %s: cannot record the failure: %s", record.id, e)
            return record  # the lease runs out and the sweep takes over
        if not last:
            await self.queue.push(record.id, delay)
        return record

    async def _release(self, upload_id: str) -> None:
        """Give the job back (shutdown): another instance may take it at once."""

        def edit(r: StoredRecord) -> StoredRecord:
            self._check_owner(r)
            return r.model_copy(update={"job": Job()})

        with contextlib.suppress(ServiceError, LeaseLost):
            await asyncio.shield(self.records.change(upload_id, edit))

    def _claim(self, record: StoredRecord) -> StoredRecord:
        moment = instant()
        if not claimable(record, moment):
            job = record.job
            if job is not None and job.retry_at is not None and job.retry_at > moment:
                raise _NotYet((job.retry_at - moment).total_seconds())
            raise LeaseLost(f"upload {record.id} is held by {job.owner if job else None}")
        status = Status.storing if record.status is Status.queued else record.status
        return record.model_copy(update={"status": status, "job": self.new_lease()})

    def _check_owner(self, record: StoredRecord) -> None:
        if record.job is None or record.job.owner != self.owner:
            raise LeaseLost(f"upload {record.id} is no longer held by {self.owner}")

    @asynccontextmanager
    async def _renewing(self, upload_id: str) -> AsyncIterator[None]:
        """Renew the lease while the block runs; stop the block when it is lost."""
        task = asyncio.current_task()
        assert task is not None
        lost: list[LeaseLost] = []

        def renewed(r: StoredRecord) -> StoredRecord:
            self._check_owner(r)
            return r.model_copy(update={"job": self.new_lease()})

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.lease_seconds / 3)
                try:
                    await self.records.change(upload_id, renewed)
                except (NotFound, LeaseLost, Conflict) as e:
                    lost.append(LeaseLost(str(e)))
                    task.cancel()
                    return
                except ServiceError as e:  # keep trying; the final write is conditional anyway
                    log.warning("upload %s: lease not renewed: %s", upload_id, e.detail)

        renewer = asyncio.create_task(renew())
        try:
            yield
        except asyncio.CancelledError:
            why = self._stopping.pop(upload_id, None)
            if lost or why:
                task.uncancel()
                raise (lost[0] if lost else _Stop(why)) from None
            raise
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def _exists(self, upload_id: str) -> bool:
        try:
            await self.records.get(upload_id)
        except NotFound:
            return False
        except StorageUnavailable:
            return True  # unknown: leave the bytes, the sweep decides later
        return True

    async def _sweep_forever(self) -> None:
        """Resume every `sweep_interval`; remove leftovers every half grace period (at
        most every 10 minutes: each pass lists everything)."""
        leftovers_every = max(self.sweep_interval, min(self.settings.grace_seconds / 2, 600.0))
        leftovers_due = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.sweep()
                if loop.time() >= leftovers_due:
                    await remove_leftovers(self.service, self.settings.grace_seconds)
                    leftovers_due = loop.time() + leftovers_every
            except ServiceError as e:
                log.warning("sweep failed, trying again in %g s: %s", self.sweep_interval, e.detail)
            await asyncio.sleep(self.sweep_interval)


def instant() -> datetime:
    """Now, to the microsecond: leases and retries need more than the records' seconds."""
    return datetime.now(UTC)


def claimable(record: StoredRecord, moment: datetime) -> bool:
    """Nobody holds a live lease and no retry is pending."""
    if record.status.final:
        return False
    job = record.job
    if job is None:
        return True
    if job.owner is not None and job.lease_until is not None and job.lease_until > moment:
        return False
    return job.retry_at is None or job.retry_at <= moment


def backoff(base: float, attempt: int) -> float:
    """Seconds before try `attempt + 1`: doubling from `base`, with jitter in [0.5, 1.5)x
    so instances that failed together do not retry together."""
    return float(base * 2 ** (attempt - 1) * (0.5 + random.random()))

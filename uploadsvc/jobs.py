"""Background work with owners and leases: an accepted upload always finishes.

Every upload that is not final is a job keyed by its id, and its record says
who works on it and until when (`leases.py`):

- **claim**: a run takes a job with a conditional write on the record, only
  if nobody holds a live lease and no retry is pending (`leases.claimable`);
  taking over a lease that expired counts an attempt, since the run before
  died with it (a poison upload that kills its process ends `failed`);
- **renew**: while it works the run extends its lease, so a long upload into
  S3 or a slow processor keeps it; losing the hold stops the work at once;
- **advance**: the steps the record still needs, each idempotent
  (`UploadService.store_staged`, then `process`), each status change a
  conditional write that only the holder may make;
- **release**: the final status clears the lease; a failed step clears it
  with `retry_at` set (exponential backoff with jitter) and counts an
  attempt; after `attempts` the upload ends `failed`, its staged bytes kept
  until it is deleted; a shutdown clears it so another instance takes over
  at once.

An instance that dies simply stops renewing: its leases expire and the sweep
of any instance (`sweep`, at start-up and every `sweep_interval`) takes the
jobs over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import timedelta
from typing import Any

from .config import JobsSettings
from .errors import Conflict, NotFound, ServiceError, StorageUnavailable
from .leases import (
    Hold,
    LeaseLost,
    abandoned,
    backoff,
    check,
    claimable,
    instant,
    lease,
    new_owner,
    renewing,
)
from .leftovers import remove_leftovers
from .metrics import JOBS
from .models import Job, Status, StoredRecord, age_seconds, now
from .queues import JobQueue, LocalQueue
from .service import UploadService

log = logging.getLogger(__name__)

#: Jobs one instance runs at once; more wait unclaimed, so their leases are
#: not ticking while they queue.
CONCURRENT_JOBS = 8


class _NotYet(Exception):
    """The job waits for a retry this many seconds from now."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class _Stop(Exception):
    """This instance cancelled the run: `deleted` (DELETE) or `shutdown`."""


class Jobs:
    """Claims, runs, retries and sweeps the jobs of one instance."""

    def __init__(
        self, service: UploadService, settings: JobsSettings, queue: JobQueue | None = None
    ) -> None:
        self.service = service
        self.records = service.records
        self.settings = settings
        #: This instance's part of every owner name (runs add their own).
        self.instance = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self.sweep_interval = max(0.1, min(settings.lease_seconds / 2, 15.0))
        #: Where jobs wait: tasks of this process unless a Redis queue is configured.
        self.queue = queue or LocalQueue(self.run)
        self._running: dict[str, asyncio.Task[Any]] = {}  # runs working here, by upload id
        self._stopping: dict[str, str] = {}  # upload id -> why its run was cancelled
        self._slots = asyncio.Semaphore(CONCURRENT_JOBS)
        self._sweeper: asyncio.Task[None] | None = None
        self._open = False

    # Lifecycle.

    async def start(self) -> None:
        """Sweep now (resume what a previous run left) and every `sweep_interval`."""
        await self.queue.open()
        self._open = True
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Take no new work; hand the runs working here back (their leases released,
        so another instance takes them at once). The queue stays connected: `close`."""
        self._open = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        tasks = list(self._running.items())
        for upload_id, task in tasks:
            self._stopping[upload_id] = "shutdown"
            task.cancel()
        await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)

    async def close(self) -> None:
        """Disconnect the queue; let the plugins' last notices go out and close them."""
        await self.queue.close()
        await self.service.pipeline.close()

    # Entry points.

    async def nudge(self, upload_id: str) -> None:
        """Queue the job of a new upload: a request's background task hands over the id only."""
        await self.queue.push(upload_id)

    def blocking_owner(self) -> str:
        """An owner for a blocking upload, whose record is created already held."""
        return new_owner(self.instance)

    def lease(self, owner: str) -> Job:
        """A fresh lease for `owner`, from now."""
        return lease(owner, self.settings.lease_seconds)

    async def run_held(self, record: StoredRecord) -> StoredRecord:
        """Finish an upload whose record the blocking path created already held,
        in the caller's task; `NotFound` if it is deleted meanwhile."""
        assert record.job is not None and record.job.owner and record.job.lease_until
        hold = Hold(record.id, record.job.owner, record.job.lease_until)
        try:
            finished = await self._working(hold, record)
        except _Stop as stop:
            if str(stop) == "deleted":
                raise NotFound(f"upload {record.id} was deleted while it was processed") from None
            raise asyncio.CancelledError from None
        if finished is None:
            raise NotFound(f"upload {record.id} was deleted while it was processed")
        return finished

    async def run(self, upload_id: str) -> None:
        """The job: claim, advance, release; never raises (the record says what happened)."""
        if not self._open:
            return  # stopping: the sweep of another instance takes it
        async with self._slots:
            owner = new_owner(self.instance)
            try:
                record = await self.records.change(upload_id, lambda r: self._claim(r, owner))
            except (NotFound, Conflict, LeaseLost):
                return  # deleted, final, or someone else's
            except _NotYet as wait:
                await self.queue.push(upload_id, wait.seconds)
                return
            except ServiceError as e:
                log.warning("upload %s: cannot claim its job now: %s", upload_id, e.detail)
                return  # the sweep tries again
            if record.status.final:
                return  # its attempts ran out at the claim
            assert record.job is not None and record.job.lease_until is not None
            with contextlib.suppress(_Stop):
                await self._working(Hold(upload_id, owner, record.job.lease_until), record)

    async def delete(self, upload_id: str) -> None:
        """Delete an upload in any status; a run working on it stops.

        The record goes first: every run's next conditional write or lease
        renewal then fails, so a run elsewhere stops within a third of a lease
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
        counts = dict.fromkeys((s for s in Status if not s.final), 0)
        for upload_id in await self.records.active():
            try:
                record = await self.records.get(upload_id)
            except NotFound:
                if age_seconds(upload_id) > self.settings.grace_seconds:
                    await self.records.forget_active(upload_id)
                continue
            except ServiceError:
                raise
            except Exception:  # one unreadable record must not stop the sweep of the rest
                log.exception("upload %s: record unreadable, skipped by the sweep", upload_id)
                continue
            if record.status.final:
                await self.records.forget_active(upload_id)
                continue
            counts[record.status] += 1
            if claimable(record, moment):
                await self.queue.push(upload_id)
        for status, count in counts.items():
            JOBS.labels(status.value).set(count)

    # One run.

    async def _working(self, hold: Hold, record: StoredRecord) -> StoredRecord | None:
        """Advance a held record under a renewed lease; handle every way out.

        Returns the record as the run left it (None: deleted meanwhile). Raises
        `_Stop` when this instance cancelled the run, after cleaning up.
        """
        task = asyncio.current_task()
        assert task is not None
        self._running[hold.upload_id] = task
        try:
            async with renewing(self.records, hold, self.settings.lease_seconds):
                return await self._advance(hold, record)
        except asyncio.CancelledError:
            why = self._stopping.pop(hold.upload_id, None)
            if why is None:
                raise
            task.uncancel()
            if why == "deleted":
                await asyncio.shield(self.service.discard(hold.upload_id))
            else:
                await self._release(hold)
            raise _Stop(why) from None
        except (LeaseLost, NotFound) as e:
            return await self._lost(hold, str(e))
        except ServiceError as e:
            return await self._retry_or_fail(hold, e.detail)
        except Exception as e:  # a bug, not the user's storage: count it like a failure
            log.exception("upload %s: job failed", hold.upload_id)
            return await self._retry_or_fail(hold, f"internal error ({type(e).__name__})")
        finally:
            if self._running.get(hold.upload_id) is task:
                del self._running[hold.upload_id]
            self._stopping.pop(hold.upload_id, None)

    async def _advance(self, hold: Hold, record: StoredRecord) -> StoredRecord:
        if record.status is Status.storing:
            await self.service.store_staged(record)
            after = Status.processing if self.service.pipeline else Status.completed
            record = await self._move(hold, status=after)
        if record.status is Status.processing:
            record = await self._move(hold, **await self.service.process(record))
        if record.status.final:
            await self.service.finish(record)
        return record

    async def _move(self, hold: Hold, **changes: Any) -> StoredRecord:
        """A status change only the holder may make; a final one ends the job."""
        status: Status = changes["status"]
        # A new step starts counting its own attempts; a final status ends the job.
        after = {"job": None, "completed_at": now()} if status.final else {"attempts": 0}

        def edit(r: StoredRecord) -> StoredRecord:
            check(r, hold.owner)
            return StoredRecord.model_validate({**r.model_dump(), **changes, **after})

        return await self.records.change(hold.upload_id, edit)

    async def _lost(self, hold: Hold, why: str) -> StoredRecord | None:
        """The hold is gone: deleted (remove what this run wrote since), or taken."""
        try:
            record = await self.records.get(hold.upload_id)
        except NotFound:
            await self.service.discard(hold.upload_id)
            log.info("upload %s: deleted while a job worked on it", hold.upload_id)
            return None
        except StorageUnavailable:
            return None  # unknown: leave the bytes; the leftovers sweep decides later
        log.info("upload %s: job stopped: %s", hold.upload_id, why)
        return record

    async def _retry_or_fail(self, hold: Hold, reason: str) -> StoredRecord | None:
        """Count the attempt; retry later, or end `failed` once attempts run out."""
        delay: float | None = None

        def edit(r: StoredRecord) -> StoredRecord:
            nonlocal delay
            check(r, hold.owner)
            attempt = r.attempts + 1
            if attempt >= self.settings.attempts:
                delay = None
                return _failed(r, attempt, reason)
            delay = backoff(self.settings.backoff_seconds, attempt)
            retry_at = instant() + timedelta(seconds=delay)
            return r.model_copy(update={"attempts": attempt, "job": Job(retry_at=retry_at)})

        log.warning("upload %s: step failed: %s", hold.upload_id, reason)
        try:
            record = await self.records.change(hold.upload_id, edit)
        except (LeaseLost, NotFound) as e:
            return await self._lost(hold, str(e))
        except ServiceError as e:
            log.warning("upload %s: cannot record the failure: %s", hold.upload_id, e.detail)
            return None  # the lease runs out and a sweep takes over
        if delay is not None:
            await self.queue.push(hold.upload_id, delay)
        return record

    async def _release(self, hold: Hold) -> None:
        """Give the job back (shutdown): another instance may take it at once."""

        def edit(r: StoredRecord) -> StoredRecord:
            check(r, hold.owner)
            return r.model_copy(update={"job": Job()})

        with contextlib.suppress(ServiceError, LeaseLost):
            async with asyncio.timeout(self.settings.lease_seconds):
                await asyncio.shield(self.records.change(hold.upload_id, edit))

    def _claim(self, record: StoredRecord, owner: str) -> StoredRecord:
        moment = instant()
        if not claimable(record, moment):
            job = record.job
            if job is not None and job.retry_at is not None and job.retry_at > moment:
                raise _NotYet((job.retry_at - moment).total_seconds())
            raise LeaseLost(f"upload {record.id} is held by {job.owner if job else None}")
        attempts = record.attempts
        if abandoned(record):  # the run before died holding it: that was an attempt
            attempts += 1
            if attempts >= self.settings.attempts:
                why = "the instance working on it stopped (killed, or cut off from the storage)"
                return _failed(record, attempts, why)
        status = Status.storing if record.status is Status.queued else record.status
        return record.model_copy(
            update={"status": status, "attempts": attempts, "job": self.lease(owner)}
        )

    async def _sweep_forever(self) -> None:
        """Resume every `sweep_interval`; remove leftovers every half grace period (at
        most every 10 minutes: each pass lists everything). Nothing stops it but `stop`."""
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
            except Exception:
                log.exception("sweep failed, trying again in %g s", self.sweep_interval)
            await asyncio.sleep(self.sweep_interval)


def _step(status: Status) -> str:
    return "processing" if status is Status.processing else "storing"


def _failed(record: StoredRecord, attempts: int, why: str) -> StoredRecord:
    """The record ended `failed` after `attempts` tries of its current step."""
    error = f"{_step(record.status)} failed after {attempts} attempts: {why}"
    return record.model_copy(
        update={
            "status": Status.failed,
            "error": error,
            "attempts": attempts,
            "completed_at": now(),
            "job": None,
        }
    )

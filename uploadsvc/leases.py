"""Who may work on an upload, and until when: the lease kept in its record.

A run that works on an upload holds it under an owner name of its own
(`<host>/<pid>/<instance>/<run>`: two runs in one process are two owners)
and a lease time. Every write the run makes is conditional on the record
still naming it (`check`), so a run that lost its hold (the lease expired and
another took over, or the upload was deleted) can change nothing. While it
works it renews the lease (`renewing`); it stops its own work as soon as the
hold is lost or its lease passes without a renewal, so two runs never work
on one upload at the same time for longer than a renewal takes.

The lease is wall-clock time in the record: instances must agree on the time
to well within a lease (NTP). The conditional writes, not the clocks, are
what keep two owners from both advancing an upload.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import Conflict, NotFound, ServiceError
from .models import Job, StoredRecord
from .records import Records

log = logging.getLogger(__name__)

#: The longest pause between retries, whatever the attempt.
MAX_BACKOFF_SECONDS = 3600.0


class LeaseLost(Exception):
    """The record changed hands, or was deleted or finished, while a run held it."""


@dataclass
class Hold:
    """One run's hold on one upload."""

    upload_id: str
    owner: str
    lease_until: datetime


def instant() -> datetime:
    """Now, to the microsecond: leases and retries need more than the records' seconds."""
    return datetime.now(UTC)


def new_owner(instance: str) -> str:
    return f"{instance}/{secrets.token_hex(3)}"


def lease(owner: str, seconds: float) -> Job:
    return Job(owner=owner, lease_until=instant() + timedelta(seconds=seconds))


def check(record: StoredRecord, owner: str) -> None:
    """`LeaseLost` unless `owner` still holds `record`."""
    if record.job is None or record.job.owner != owner:
        held_by = record.job.owner if record.job else None
        raise LeaseLost(f"upload {record.id} is held by {held_by}, not {owner}")


def claimable(record: StoredRecord, moment: datetime) -> bool:
    """Not final, nobody holds a live lease, and no retry is pending."""
    if record.status.final:
        return False
    job = record.job
    if job is None:
        return True
    if job.owner is not None and job.lease_until is not None and job.lease_until > moment:
        return False
    return job.retry_at is None or job.retry_at <= moment


def abandoned(record: StoredRecord) -> bool:
    """A run held it and stopped without a word (its process died, or lost the store)."""
    return record.job is not None and record.job.owner is not None


def backoff(base: float, attempt: int) -> float:
    """Seconds before try `attempt + 1`: doubling from `base` up to an hour, with jitter
    in [0.5, 1.5)x so instances that failed together do not retry together."""
    return min(base * 2.0 ** min(attempt - 1, 40), MAX_BACKOFF_SECONDS) * (0.5 + random.random())


@asynccontextmanager
async def renewing(records: Records, hold: Hold, seconds: float) -> AsyncIterator[None]:
    """Renew the hold's lease every third of `seconds` while the block runs.

    The block is cancelled, and `LeaseLost` raised in its place, when a renewal
    finds the record gone or held by another, or when the lease has passed
    without a renewal (the store was away): by then another run may have
    taken over. A record the run itself finished ends the renewals quietly.
    """
    task = asyncio.current_task()
    assert task is not None
    lost: list[LeaseLost] = []

    def renewed(r: StoredRecord) -> StoredRecord:
        if r.status.final:
            raise _Finished
        check(r, hold.owner)
        return r.model_copy(update={"job": lease(hold.owner, seconds)})

    async def renew() -> None:
        while True:
            await asyncio.sleep(seconds / 3)
            try:
                updated = await records.change(hold.upload_id, renewed)
            except _Finished:
                return
            except (NotFound, LeaseLost, Conflict) as e:
                lost.append(LeaseLost(str(e)))
            except ServiceError as e:
                if instant() < hold.lease_until:
                    log.warning("upload %s: lease not renewed: %s", hold.upload_id, e.detail)
                    continue
                lost.append(LeaseLost(f"lease of upload {hold.upload_id} ran out: {e.detail}"))
            else:
                assert updated.job is not None and updated.job.lease_until is not None
                hold.lease_until = updated.job.lease_until
                continue
            task.cancel()
            return

    renewer = asyncio.create_task(renew())
    try:
        yield
    except asyncio.CancelledError:
        if not lost:
            raise
        task.uncancel()
        raise lost[0] from None
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)


class _Finished(Exception):
    """The record is final: nothing left to renew."""

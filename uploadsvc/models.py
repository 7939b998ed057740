"""The upload record, its states, and the API's JSON shapes.

`UploadRecord` is what clients see; `StoredRecord`, what is stored as
`<id>.json` beside the bytes, is the same model plus `job`, the bookkeeping of
whoever works on the upload (see `jobs.py`). One model, so the two can never
drift apart; `public()` gives the client's view.

The statuses and the moves between them are defined here and only here
(`Status.can_become`); `records.py` refuses any other move.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Status(StrEnum):
    queued = "queued"
    storing = "storing"
    processing = "processing"
    completed = "completed"
    failed = "failed"

    @property
    def final(self) -> bool:
        """Nothing changes an upload in a final status but its deletion."""
        return not _NEXT[self]

    def can_become(self, other: Status) -> bool:
        """Whether a record may move from this status to `other`.

        A status may stay as it is (a retried step, a renewed lease) unless it is final.
        """
        return other in _NEXT[self]


_NEXT: dict[Status, frozenset[Status]] = {
    Status.queued: frozenset({Status.queued, Status.storing, Status.failed}),
    Status.storing: frozenset({Status.storing, Status.processing, Status.completed, Status.failed}),
    Status.processing: frozenset({Status.processing, Status.completed, Status.failed}),
    Status.completed: frozenset(),
    Status.failed: frozenset(),
}


class Job(BaseModel):
    """Who works on an upload and until when; stored in the record, never shown.

    `owner` holds the upload while `lease_until` is in the future and renews
    it as it works; an expired lease may be taken over by any instance. A step
    that failed waits until `retry_at` before anyone tries it again.
    """

    owner: str | None = None
    lease_until: datetime | None = None
    retry_at: datetime | None = None


class UploadRecord(BaseModel):
    id: str
    filename: str
    size: int
    content_type: str
    sha256: str
    status: Status
    error: str | None = None
    created_at: datetime
    completed_at: datetime | None = None
    url: str
    results: dict[str, Any] = Field(default_factory=dict)
    #: Tries of the current background step so far (0 before the first failure).
    attempts: int = 0
    #: Files processors made from the upload: name -> URL.
    derived: dict[str, str] = Field(default_factory=dict)
    #: A processor refused the upload (`failed`, its bytes removed; `error` says why).
    rejected: bool = False

    def public(self) -> dict[str, Any]:
        """The record as clients see it (JSON-ready), whatever subclass holds it."""
        return self.model_dump(mode="json", include=set(UploadRecord.model_fields))


class StoredRecord(UploadRecord):
    """The record as stored: the client's view plus who works on it."""

    job: Job | None = None
    #: The content type of each derived file, by name.
    derived_types: dict[str, str] = Field(default_factory=dict)


class Accepted(BaseModel):
    """The 202 answer of the background path."""

    id: str
    status: Status
    status_url: str


class UploadPage(BaseModel):
    items: Sequence[UploadRecord]
    next_cursor: str | None


class Health(BaseModel):
    status: str


def new_id() -> str:
    """A fresh upload id: 12 hex digits of milliseconds, then 16 random ones.

    Ids sort by creation time, so listing newest-first is a sort of names,
    with no index to keep; the random part makes them unguessable and unique
    across instances.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


ID_PATTERN = r"^[0-9a-f]{28}$"


def age_seconds(upload_id: str) -> float:
    """Seconds since the upload's id was made (an id starts with its creation time)."""
    return time.time() - int(upload_id[:12], 16) / 1000


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)

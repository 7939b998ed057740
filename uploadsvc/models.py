"""The upload record and the API's JSON shapes.

`UploadRecord` is both what clients see and what is stored as `<id>.json`
beside the bytes: one model, so the two can never drift apart.
"""

from __future__ import annotations

import secrets
import time
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


class Accepted(BaseModel):
    """The 202 answer of the background path."""

    id: str
    status: Status
    status_url: str


class UploadPage(BaseModel):
    items: list[UploadRecord]
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


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)

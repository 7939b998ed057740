"""Domain errors and the one place where they become HTTP responses.

Lower layers (streaming, storage, records) raise these; none of them knows HTTP.
Each error type carries its status and machine code, so the table of what a
client sees lives here and nowhere else. Every JSON error has the shape
``{"detail": "...", "code": "..."}``; a browser form post gets the same outcome
as an HTML page.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel


class ServiceError(Exception):
    """Base of every error a client may see; `detail` is safe to show."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    """The upload exists but is not in a state that allows the request."""

    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class RangeNotSatisfiable(ServiceError):
    status, code = 416, "range_not_satisfiable"

    def __init__(self, detail: str, size: int) -> None:
        super().__init__(detail)
        self.size = size


class StorageUnavailable(ServiceError):
    """The backend could not be reached or refused the operation."""

    status, code = 503, "storage_unavailable"


class PreconditionFailed(Exception):
    """A conditional write lost a race (the object changed or already exists).

    Internal: callers decide what a lost race means (retry, or Conflict).
    """


class ErrorBody(BaseModel):
    """The JSON error shape, for OpenAPI."""

    detail: str
    code: str


def error_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` entries for the errors a route may return."""
    return {
        e.status: {"model": ErrorBody, "description": f"`{e.code}`"} for e in errors
    }

"""Domain errors and the one place where they become HTTP responses.

Lower layers (streaming, storage, records) raise these; none of them knows HTTP.
Each error type carries its status and machine code, so the table of what a
client sees lives here and nowhere else. Every JSON error has the shape
``{"detail": "...", "code": "..."}``; a browser form post gets the same outcome
as an HTML page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error a client may see; `detail` is safe to show."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        """Response headers this error adds."""
        return {}

    def fields(self) -> dict[str, str]:
        """Fields this error adds to the JSON body, beside `detail` and `code`."""
        return {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    """No token, or one that is not valid, while `[auth] tokens` is set."""

    status, code = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A token without the scope the route needs, or a write from another site."""

    status, code = 403, "forbidden"


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

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class UploadRejected(ServiceError):
    """A processor refused the upload; its record stays, `failed`, saying why."""

    status, code = 422, "rejected"

    def __init__(self, detail: str, upload_id: str) -> None:
        super().__init__(detail)
        self.upload_id = upload_id

    def headers(self) -> dict[str, str]:
        return {"Location": f"/uploads/{self.upload_id}"}

    def fields(self) -> dict[str, str]:
        return {"id": self.upload_id}


class StorageUnavailable(ServiceError):
    """The backend could not be reached or refused the operation."""

    status, code = 503, "storage_unavailable"


class RequestTimeout(ServiceError):
    """The client stopped sending its body; the connection is closed after the answer,
    since the rest of the body may still come (or never)."""

    status, code = 408, "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class HeadersTooLarge(ServiceError):
    status, code = 431, "headers_too_large"


class Busy(ServiceError):
    """`max_concurrent_uploads` are being received; the client should retry later."""

    status, code = 503, "busy"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InsufficientStorage(ServiceError):
    status, code = 507, "insufficient_storage"


class PreconditionFailed(Exception):
    """A conditional write lost a race (the object changed or already exists).

    Internal: callers decide what a lost race means (retry, or Conflict).
    """


class ErrorBody(BaseModel):
    """The JSON error shape, for OpenAPI."""

    detail: str
    code: str
    id: str | None = Field(None, description="The upload's id (`rejected` only)")


#: A `detail` for each code's example in the OpenAPI description, as the code words it.
_EXAMPLE_DETAILS = {
    "bad_request": "no file in field 'file'",
    "not_found": "no upload '019ac0e6d5a03f2b9c4d5e6f7a8b'",
    "conflict": "upload 019ac0e6d5a03f2b9c4d5e6f7a8b is processing, not completed",
    "payload_too_large": "file is larger than the limit of 1073741824 bytes",
    "unsupported_media_type": "send the file as multipart/form-data in field 'file'",
    "range_not_satisfiable": "range 'bytes=99999-' is outside the 12345 bytes stored",
    "rejected": "type application/x-dosexec is not allowed (allowed: image/*)",
    "storage_unavailable": "storage file://./uploads failed: No space left on device",
    "internal_error": "internal error",
}


def error_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` entries for the errors a route may return, each with an
    example (the first error of a status; the description names every code that
    shares it), and `default`: any other error (a 500) has the same shape.

    Listing `default` also keeps FastAPI from adding its own 422 "Validation
    Error": a request that does not validate is a 400 `bad_request` here.
    """
    by_status: dict[int, list[type[ServiceError]]] = {}
    for e in errors:
        by_status.setdefault(e.status, []).append(e)
    entries: dict[int | str, dict[str, object]] = {
        status: {
            "model": ErrorBody,
            "description": " or ".join(f"`{e.code}`" for e in same),
            "content": {"application/json": {"example": _error_example(same[0])}},
        }
        for status, same in by_status.items()
    }
    entries["default"] = {
        "model": ErrorBody,
        "description": "Any other error, in the same shape",
        "content": {"application/json": {"example": _error_example(ServiceError)}},
    }
    return entries


def _error_example(error: type[ServiceError]) -> dict[str, str]:
    example = {"detail": _EXAMPLE_DETAILS.get(error.code, error.code), "code": error.code}
    if error is UploadRejected:
        example["id"] = "019ac0e6d5a03f2b9c4d5e6f7a8b"
    return example


#: Errors raised outside our code (routing, validation), in the same shape.
_STARLETTE_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as `{"detail", "code"}` JSON, or as a page for browsers."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return error_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _STARLETTE_CODES.get(exc.status_code, "http_error")
        return render_error(request, exc.status_code, code, str(exc.detail), exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return render_error(request, 400, BadRequest.code, f"{where}: {first['msg']}")

    async def disconnected(request: Request, exc: Exception) -> Response:
        # Nobody is left to read it; the answer is for the log.
        return render_error(
            request, 400, BadRequest.code, "upload interrupted: the client disconnected"
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render_error(request, 500, ServiceError.code, "internal error")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, unexpected)


def error_response(request: Request, exc: ServiceError) -> Response:
    """`exc` as the client sees it; also for middleware that answers before the handlers."""
    from .web.urls import public_path

    headers = exc.headers()
    if "Location" in headers:  # a path of this app: under the prefix it is served at
        headers["Location"] = public_path(request, headers["Location"])
    return render_error(request, exc.status, exc.code, exc.detail, headers, exc.fields())


def render_error(
    request: Request,
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
) -> Response:
    from starlette.responses import JSONResponse

    from .web.templating import templates, wants_html

    if wants_html(request):
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": status, "code": code, "detail": detail},
            status_code=status,
            headers=headers,
        )
    body = {"detail": detail, "code": code, **(fields or {})}
    return JSONResponse(body, status_code=status, headers=headers)

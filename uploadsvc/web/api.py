"""The JSON API (and its HTML twin for form posts): thin routes over the service.

Routes translate HTTP into service calls and back; every rule lives below
them. Errors are raised as domain errors and rendered by the one handler in
`errors.py`; each route lists the ones it can return, for OpenAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from .. import metrics
from ..errors import (
    BadRequest,
    Busy,
    Conflict,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RequestTimeout,
    StorageUnavailable,
    UnsupportedMediaType,
    UploadRejected,
    error_responses,
)
from ..jobs import Jobs
from ..models import ID_PATTERN, Accepted, Health, Status, UploadPage, UploadRecord
from ..service import UploadService
from ..storage import check_in_time
from . import examples
from .downloads import byte_range, derived_filename, download_headers, not_modified, safe_headers
from .templating import templates, wants_html
from .urls import public_path, public_record, root_path, under_root

router = APIRouter()

HEALTH_TIMEOUT = 5.0

_HTML_TWIN = (
    "A browser's form post (`Accept` preferring `text/html`) is answered with "
    "303 See Other to the upload's page instead of JSON."
)
#: Every upload route may answer these, besides its own.
_UPLOAD_ERRORS = (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    StorageUnavailable,
    RequestTimeout,
    Busy,
    InsufficientStorage,
)
# The body is parsed by the service as a stream, so FastAPI cannot infer it.
_MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _service(request: Request) -> UploadService:
    service: UploadService = request.app.state.service
    return service


def _jobs(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.jobs
    return jobs


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise BadRequest(f"invalid Content-Length {value!r}")
    return int(value)


def _answer(request: Request, record: UploadRecord, status: int, body: Any) -> Response:
    """The outcome as JSON, or, for a browser's form post, a redirect to its page.

    Post-redirect-get: the browser then shows `/uploads/{id}`, so a reload asks
    for the page again instead of sending the file a second time.
    """
    headers = {"Location": public_path(request, f"/uploads/{record.id}")}
    if wants_html(request):
        return Response(status_code=303, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


@router.post(
    "/upload-blocking/",
    status_code=201,
    response_model=UploadRecord,
    responses={
        **examples.json_example(
            201,
            examples.RECORD,
            "Stored and processed: the record, `completed` "
            "(or `failed` if a processor failed; a rejection is a 422)",
        ),
        # NotFound: the upload was deleted while it was processed.
        **error_responses(*_UPLOAD_ERRORS, NotFound, UploadRejected),
    },
    openapi_extra=_MULTIPART_BODY,
    summary="Upload a file; answer once it is stored and processed",
    description=_HTML_TWIN,
)
async def upload_blocking(request: Request) -> Response:
    jobs = _jobs(request)
    with metrics.upload("blocking"):
        record = await _service(request).receive_blocking(
            # The body straight from Starlette, no wrapper: this loop runs once per
            # received chunk. A vanished client (ClientDisconnect) is mapped in errors.py.
            request.stream(),
            request.headers.get("content-type"),
            _content_length(request),
            lease=partial(jobs.lease, jobs.blocking_owner()),
        )
        if not record.status.final:
            record = await jobs.run_held(record)
        if record.rejected:
            raise UploadRejected(record.error or "rejected", record.id)
    return _answer(request, record, 201, public_record(request, record))


@router.post(
    "/upload-nonblocking/",
    status_code=202,
    response_model=Accepted,
    responses={
        **examples.json_example(202, examples.ACCEPTED, "Received: the upload is `queued`"),
        **error_responses(*_UPLOAD_ERRORS),
    },
    openapi_extra=_MULTIPART_BODY,
    summary="Upload a file; answer once the bytes are durably received",
    description="Storing and processing go on in the background: follow `status_url`. "
    + _HTML_TWIN,
)
async def upload_nonblocking(request: Request, background: BackgroundTasks) -> Response:
    with metrics.upload("background"):
        record = await _service(request).receive_background(
            # The body straight from Starlette, no wrapper: this loop runs once per
            # received chunk. A vanished client (ClientDisconnect) is mapped in errors.py.
            request.stream(),
            request.headers.get("content-type"),
            _content_length(request),
        )
    background.add_task(_jobs(request).nudge, record.id)
    status_url = public_path(request, f"/uploads/{record.id}")
    accepted = Accepted(id=record.id, status=record.status, status_url=status_url)
    return _answer(request, record, 202, accepted.model_dump(mode="json"))


@router.get(
    "/uploads",
    response_model=UploadPage,
    responses={
        **examples.json_example(200, examples.PAGE),
        **error_responses(BadRequest, StorageUnavailable),
    },
    summary="Uploads, newest first, `limit` at a time",
    description="`next_cursor` is null on the last page; otherwise pass it as `cursor` "
    "for the next one.",
)
async def list_uploads(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    items, next_cursor = await _service(request).records.page(limit, cursor)
    if wants_html(request):
        context = {"items": items, "next_cursor": next_cursor, "limit": limit}
        return templates.TemplateResponse(request, "list.html", context)
    page = UploadPage(items=items, next_cursor=next_cursor).model_dump(mode="json")
    for item in page["items"]:
        under_root(item, root_path(request))
    return JSONResponse(page)


@router.get(
    "/uploads/{upload_id}",
    response_model=UploadRecord,
    responses={
        **examples.json_example(200, examples.RECORD),
        **error_responses(NotFound, StorageUnavailable),
    },
    summary="One upload's record",
)
async def get_upload(request: Request, upload_id: str) -> Response:
    record = await _service(request).records.get(upload_id)
    if wants_html(request):
        return templates.TemplateResponse(request, "record.html", {"record": record})
    return JSONResponse(public_record(request, record))


@router.get(
    "/uploads/{upload_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The stored bytes"},
        206: {"content": {"application/octet-stream": {}}, "description": "A byte range"},
        304: {"description": "Not modified (If-None-Match)"},
        **error_responses(NotFound, Conflict, RangeNotSatisfiable, StorageUnavailable),
    },
    summary="The stored bytes, whole or a range; only once the upload is completed",
)
async def get_content(request: Request, upload_id: str) -> Response:
    service = _service(request)
    record = await service.records.get(upload_id)
    if record.status is not Status.completed:
        raise Conflict(f"upload {upload_id} is {record.status.value}, not completed")
    headers = download_headers(record)
    if not_modified(request.headers.get("if-none-match"), record):
        return Response(status_code=304, headers=headers)
    wanted = byte_range(request.headers.get("range"), request.headers.get("if-range"), record)
    start, end = wanted or (0, record.size)
    headers["Content-Length"] = str(end - start)
    # Set as a header, not media_type: Starlette would append "; charset=utf-8"
    # to text types, claiming an encoding the uploader never declared.
    headers["Content-Type"] = record.content_type
    status = 206 if wanted else 200
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{record.size}"
    if request.method == "HEAD":  # the headers come from the record: read nothing
        return Response(status_code=status, headers=headers)
    return StreamingResponse(
        await _opened(service.storage.read(upload_id, start, end)),
        status_code=status,
        headers=headers,
    )


# HEAD answers with the same headers (clients check size and ETag before a download).
router.add_api_route(
    "/uploads/{upload_id}/content", get_content, methods=["HEAD"], include_in_schema=False
)


async def _opened(blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Read the first block before answering.

    Once the 200 and its headers are sent, a missing object or a failing
    backend can only cut the body short; reading ahead lets them become a
    proper 404 or 503.
    """
    first = await anext(blocks, b"")

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for block in blocks:
            yield block

    return rest()


@router.get(
    "/uploads/{upload_id}/derived/{name}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The derived file"},
        **error_responses(NotFound, StorageUnavailable),
    },
    summary="A file a processor made from the upload (a thumbnail)",
)
async def get_derived(request: Request, upload_id: str, name: str) -> Response:
    service = _service(request)
    record, content_type, size = await service.derived_file(upload_id, name)
    headers = safe_headers(derived_filename(record, name, content_type))
    headers["Content-Length"] = str(size)
    headers["Content-Type"] = content_type  # as for content: no charset added
    if request.method == "HEAD":
        return Response(headers=headers)
    return StreamingResponse(await _opened(service.read_derived(upload_id, name)), headers=headers)


router.add_api_route(
    "/uploads/{upload_id}/derived/{name}", get_derived, methods=["HEAD"], include_in_schema=False
)


@router.delete(
    "/uploads/{upload_id}",
    status_code=204,
    responses=error_responses(NotFound, StorageUnavailable),
    summary="Delete an upload in any status: its bytes, derived files and record",
)
async def delete_upload(request: Request, upload_id: str) -> Response:
    await _jobs(request).delete(upload_id)
    return Response(status_code=204)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        # Turned off ([metrics] enabled = false), the route is as absent as any unknown one.
        **error_responses(),
    },
    summary="Metrics in the Prometheus text format",
)
async def get_metrics(request: Request) -> Response:
    if not request.app.state.settings.metrics.enabled:
        raise NotFound("metrics are disabled ([metrics] enabled = false)")
    body, content_type = metrics.exposition(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


@router.get(
    "/healthz",
    response_model=Health,
    responses={
        **examples.json_example(200, examples.HEALTH),
        **error_responses(StorageUnavailable),
    },
    summary="Whether the storage answers",
)
async def healthz(request: Request) -> Health:
    # The storage only: the staging folder's check would just recreate it, and
    # each check is a thread hop that waits for the GIL under upload load.
    await check_in_time(_service(request).storage, HEALTH_TIMEOUT)
    return Health(status="ok")

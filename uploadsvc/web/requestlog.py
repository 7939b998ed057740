"""The request log: one `request` line per HTTP request, and its `X-Request-ID`.

A pure ASGI middleware, and the outermost layer of the app (`LoggedApp`:
outside even the handler of unexpected errors), so every answer carries the
request id, a 500 included, and every request gets its line, a client that
vanished mid-upload included. It neither buffers nor wraps the body: it adds
up the length of each message as it passes, one addition per chunk.

The id is the proxy's `X-Request-ID` when that is sane (1 to 128 of
`A-Z a-z 0-9 . _ -`: it is copied into every line, so nothing that could
break one), else a fresh one. No other header, no query string (a token may
travel in one some day) and no body byte is logged: the line has the path,
status, bytes each way, duration, client address, and the upload the
request created or touched.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import RequestContext, bind_request, get_logger, unbind_request
from ..models import ID_PATTERN

HEADER = b"x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UPLOAD_ID = re.compile(ID_PATTERN)
#: Longer paths are cut in the line (the router has refused them anyway).
MAX_PATH = 1024
#: nginx's code for "the client closed the connection before an answer".
CLIENT_GONE = 499

log = get_logger("uploadsvc.requests")


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The first `X-Request-ID` if it is sane, else a fresh random one."""
    for name, value in headers:
        if name.lower() == HEADER:
            text = value.decode("latin-1")
            return text if _SANE_ID.fullmatch(text) else new_request_id()
    return new_request_id()


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class _Exchange:
    received: int = 0
    sent: int = 0
    status: int | None = None
    finished: float | None = None  # when the last body byte went out
    disconnected: bool = False


class RequestLog:
    """Binds the request id for the request's lines, answers it, logs the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = RequestContext(request_id(scope["headers"]))
        header = (HEADER, context.request_id.encode())
        seen = _Exchange()

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen.received += len(message.get("body", b""))
            elif message["type"] == "http.disconnect" and seen.finished is None:
                seen.disconnected = True
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)
            if message["type"] == "http.response.body":
                seen.sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    seen.finished = time.perf_counter()

        token = bind_request(context)
        try:
            await self.app(scope, receiving, sending)
        finally:
            _log(scope, context, seen, started)
            unbind_request(token)


def _log(scope: Scope, context: RequestContext, seen: _Exchange, started: float) -> None:
    status = seen.status or (CLIENT_GONE if seen.disconnected else None)
    fields: dict[str, Any] = {
        "method": scope["method"],
        "path": _path(scope),
        "status": status,
        "received_bytes": seen.received,
        "sent_bytes": seen.sent,
        "duration_ms": round(((seen.finished or time.perf_counter()) - started) * 1000, 1),
        "client": _client(scope),
        "request_id": context.request_id,
    }
    upload_id = scope.get("path_params", {}).get("upload_id") or context.upload_id
    if isinstance(upload_id, str) and _UPLOAD_ID.fullmatch(upload_id):
        fields["upload_id"] = upload_id
    if seen.disconnected:
        fields["disconnected"] = True
    (log.info if status is not None and status < 500 else log.warning)("request", **fields)


def _path(scope: Scope) -> str:
    """The path as sent (still percent-encoded: one line stays one line), no query."""
    raw = scope.get("raw_path")
    if raw:
        path = raw.decode("ascii", "backslashreplace")
    else:
        path = scope["path"].encode("unicode_escape").decode("ascii")
    return str(path.split("?", 1)[0][:MAX_PATH])


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


class LoggedApp(FastAPI):
    """FastAPI with the request log outside every other layer (see the module docstring)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestLog(super().build_middleware_stack())

"""The request log's rules: which `X-Request-ID` is kept, what every answer carries,
and what the one line per request says, over plain ASGI apps (no server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from uploadsvc.web.requestlog import MAX_PATH, RequestLog, request_id

UPLOAD_ID = "01a22ab65cd6e6b7a39a0919a11c"


@pytest.mark.parametrize(
    "sent",
    ["abc", "my-proxy.id_42", "0" * 128, "3f2b9c1e-7a4d-4b8e-9c7f-1e2d3c4b5a69", "A.B_C-D"],
)
def test_a_sane_request_id_is_kept(sent: str) -> None:
    assert request_id([(b"x-request-id", sent.encode())]) == sent


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"0" * 129,
        b"two words",
        b"line\nbreak",
        b'quote"d',
        b"semi;colon",
        b"caf\xc3\xa9",
        b"a=b",
        b"Bearer secret/token+",
    ],
)
def test_anything_else_is_replaced_by_a_fresh_id(sent: bytes) -> None:
    got = request_id([(b"x-request-id", sent)])
    assert got != sent.decode("latin-1")
    assert re.fullmatch(r"[0-9a-f]{32}", got)


def test_without_the_header_each_request_gets_its_own_id() -> None:
    ids = {request_id([(b"accept", b"*/*")]) for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_the_first_header_counts() -> None:
    assert request_id([(b"x-request-id", b"first"), (b"x-request-id", b"second")]) == "first"


# The middleware over small ASGI apps.


def logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of each request line (structlog hands the formatter its event dict)."""
    return [
        {**r.msg, "level": r.levelname}  # type: ignore[dict-item]
        for r in caplog.records
        if r.name == "uploadsvc.requests"
    ]


def scope(path: str = "/uploads", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"token=hunter2",
        "headers": [(b"authorization", b"Bearer hunter2"), *(headers or [])],
        "client": ("10.1.2.3", 4567),
    }


def call(app: Any, scope: Scope, body: list[bytes], disconnect: bool = False) -> list[Message]:
    """Run `app` wrapped in the request log; the messages it sent."""
    incoming: list[Message] = [
        {"type": "http.request", "body": b, "more_body": i < len(body) - 1}
        for i, b in enumerate(body)
    ]
    if disconnect:
        incoming[-1]["more_body"] = True
        incoming.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await RequestLog(app)(scope, receive, send)

    with contextlib.suppress(RuntimeError):  # an app's failure, re-raised after its line
        asyncio.run(run())
    return sent


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers it back in two chunks."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    scope.setdefault("path_params", {})["upload_id"] = UPLOAD_ID  # as the router does
    await send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"b")]})
    await send({"type": "http.response.body", "body": body[:3], "more_body": True})
    await send({"type": "http.response.body", "body": body[3:]})


def header(messages: list[Message]) -> str:
    (start,) = [m for m in messages if m["type"] == "http.response.start"]
    values = [v.decode() for k, v in start["headers"] if k == b"x-request-id"]
    assert len(values) == 1
    return values[0]


def test_every_answer_carries_the_id_and_one_line_tells_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="uploadsvc.requests")
    sent = call(echo, scope(headers=[(b"x-request-id", b"from-proxy")]), [b"hello ", b"world"])
    assert header(sent) == "from-proxy"
    (line,) = logged(caplog)
    assert (line["event"], line["level"]) == ("request", "INFO")
    assert {k: line[k] for k in ("method", "path", "status", "request_id", "upload_id")} == {
        "method": "POST",
        "path": "/uploads",
        "status": 201,
        "request_id": "from-proxy",
        "upload_id": UPLOAD_ID,
    }
    assert (line["received_bytes"], line["sent_bytes"], line["client"]) == (11, 11, "10.1.2.3:4567")
    assert line["duration_ms"] >= 0
    assert "hunter2" not in repr(line) and "disconnected" not in line


def test_a_generated_id_is_answered_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uploadsvc.requests")
    sent = call(echo, scope(headers=[(b"x-request-id", b"bad id")]), [b"x"])
    (line,) = logged(caplog)
    assert header(sent) == line["request_id"] != "bad id"


def test_a_failing_app_still_gets_its_line_and_the_error_answer_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Outermost, the log sees the 500 that the error handler inside it sends."""
    caplog.set_level(logging.INFO, logger="uploadsvc.requests")

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"internal error"})
        raise RuntimeError("a bug")

    sent = call(failing, scope(), [b""])
    (line,) = logged(caplog)
    assert (line["status"], line["level"]) == (500, "WARNING")
    assert header(sent) == line["request_id"]


def test_a_client_gone_before_any_answer_is_499(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uploadsvc.requests")

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    assert call(reader, scope(), [b"part of a body"], disconnect=True) == []
    (line,) = logged(caplog)
    assert line["status"] == 499 and line["disconnected"] is True
    assert line["received_bytes"] == len(b"part of a body")


def test_the_path_is_logged_as_sent_without_query_and_cut_when_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="uploadsvc.requests")
    call(echo, scope("/uploads/a%0Ab"), [b""])
    call(echo, scope("/" + "x" * 5000), [b""])
    first, second = logged(caplog)
    assert first["path"] == "/uploads/a%0Ab"
    assert len(second["path"]) == MAX_PATH


def test_other_scopes_pass_through_untouched(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uploadsvc.requests")
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    asyncio.run(RequestLog(app)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == [{"type": "lifespan"}] and logged(caplog) == []

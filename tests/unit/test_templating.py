"""web.templating.wants_html: only a client that prefers HTML over JSON gets a page."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from uploadsvc.web.templating import wants_html

FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
CHROME = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


def request_with(accept: str | None) -> Request:
    headers = [] if accept is None else [(b"accept", accept.encode("latin-1"))]
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/upload-blocking/",
            "query_string": b"",
            "headers": headers,
        }
    )


@pytest.mark.parametrize(
    "accept",
    [
        FIREFOX,
        CHROME,
        "text/html",
        "TEXT/HTML",
        "application/xhtml+xml",
        "text/html, application/json;q=0.9",
        "application/json;q=0.1, text/html;q=0.2",
    ],
)
def test_browsers_get_html(accept: str) -> None:
    assert wants_html(request_with(accept)) is True


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "*/*",
        "application/json",
        "application/*",
        "text/html;q=0.5, application/json",
        "text/html, application/json",  # a tie goes to JSON
        "text/html;q=0.8, */*",
        "text/html;q=0, */*;q=0.1",
        "text/html;q=abc",
        "text/plain",
    ],
)
def test_api_clients_get_json(accept: str | None) -> None:
    assert wants_html(request_with(accept)) is False

"""web.templating: only a client that prefers HTML over JSON gets a page; sizes in
units people read; the storage shown without its secrets."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from uploadsvc.web.pages import storage_label
from uploadsvc.web.templating import human_bytes, wants_html

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


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1,023 bytes"),
        (1536, "1.5 KiB"),
        (32 << 20, "32 MiB"),
        (1 << 30, "1 GiB"),
        (5 * (1 << 30) // 2, "2.5 GiB"),
        (3 << 40, "3 TiB"),
    ],
)
def test_sizes_read_in_binary_units(size: int, shown: str) -> None:
    assert human_bytes(size) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("s3://AKIAEXAMPLE:s3cr3t@bucket/prefix?token=abc", "s3://bucket/prefix"),
        ("sftp://user:pw@host:2222/srv/files", "sftp://host:2222/srv/files"),
        ("file:///var/uploads", "file:///var/uploads"),
    ],
)
def test_the_storage_is_shown_without_secrets(url: str, shown: str) -> None:
    assert storage_label(url) == shown

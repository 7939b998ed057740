"""web.origins: which requests come from another site."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from uploadsvc.web.origins import Site, normalise, request_site

ALLOWED = ["https://app.example.org"]


def site(scheme: str = "http", host: str = "127.0.0.1:8000", **headers: str) -> Site:
    raw = {"host": host, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return request_site({"scheme": scheme}, Headers(raw), ALLOWED)


def test_no_browser_headers_is_no_browser() -> None:
    assert site() is Site.same


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"origin": "http://127.0.0.1:8000"}, Site.same),
        ({"origin": "HTTP://127.0.0.1:8000"}, Site.same),
        ({"origin": "http://127.0.0.1:8001"}, Site.foreign),
        ({"origin": "https://127.0.0.1:8000"}, Site.foreign),
        ({"origin": "null"}, Site.foreign),
        ({"origin": "https://evil.example"}, Site.foreign),
        ({"origin": "https://app.example.org"}, Site.allowed),
        ({"sec_fetch_site": "same-origin"}, Site.same),
        ({"sec_fetch_site": "none"}, Site.same),
        ({"sec_fetch_site": "cross-site"}, Site.foreign),
        ({"sec_fetch_site": "same-site"}, Site.foreign),  # a sibling subdomain
        ({"sec_fetch_site": "cross-site", "origin": "https://app.example.org"}, Site.allowed),
        ({"sec_fetch_site": "cross-site", "origin": "https://evil.example"}, Site.foreign),
        # A proxy may hide our public host: the browser's word is taken first.
        ({"sec_fetch_site": "same-origin", "origin": "https://public.example"}, Site.same),
    ],
)
def test_origin_and_sec_fetch_site(headers: dict[str, str], expected: Site) -> None:
    assert site(**headers) is expected


def test_default_ports_and_the_forwarded_scheme() -> None:
    assert site(host="files.example.org:80", origin="http://files.example.org") is Site.same
    assert site("https", "files.example.org", origin="https://files.example.org:443") is Site.same
    assert site("https", "files.example.org", origin="http://files.example.org") is Site.foreign


def test_any_origin_is_allowed_with_a_star() -> None:
    headers = Headers({"host": "a", "origin": "https://evil.example"})
    assert request_site({"scheme": "http"}, headers, ["*"]) is Site.allowed


def test_normalise() -> None:
    assert normalise(" HTTPS://Example.ORG:443 ") == "https://example.org"
    assert normalise("http://example.org:8080") == "http://example.org:8080"

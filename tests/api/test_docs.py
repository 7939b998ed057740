"""/docs and /redoc work offline: every asset they load comes from this service.

FastAPI's default pages load Swagger UI, ReDoc, a favicon and Google fonts
from CDNs; here they come from the installed `fastapi-offline` package. The
pages and the stylesheet must name no other host. The scripts are bundles
full of URL-shaped strings (XML namespaces, JSON Schema ids, links in
messages), so they are compared with the package's own files instead, and the
browser test (tests/browser) proves that rendering them sends no request
outside the service.
"""

from __future__ import annotations

import re
from importlib.resources import files
from urllib.parse import urljoin

import pytest

from tests.conftest import Live

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

ABSOLUTE = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")
#: Where an HTML page names what the browser loads, and where Swagger UI's
#: script names the description it fetches.
REFERENCES = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'""")
#: What a stylesheet loads: url(...) and @import.
CSS_LOADS = re.compile(r"""url\(\s*["']?([^"')]+)|@import\s+["']?([^"';\s]+)""")
PACKAGE_ASSETS = files("fastapi_offline") / "static"


def external_urls(text: str, own: str) -> list[str]:
    """Absolute and protocol-relative URLs in `text` that are not the service's own."""
    return [url for url in ABSOLUTE.findall(text) if not url.startswith(own)]


def referenced(html: str, page_url: str) -> set[str]:
    return {urljoin(page_url, a or b) for a, b in REFERENCES.findall(html)}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_what_the_service_serves(live: Live, page: str) -> None:
    response = live.http.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert external_urls(response.text, live.url) == []
    assets = referenced(response.text, live.url + page)
    assert f"{live.url}/openapi.json" in assets
    scripts = {url for url in assets if url.endswith(".js")}
    assert scripts, f"{page} loads no script"
    for url in assets:
        assert url.startswith(live.url + "/"), url
        asset = live.http.get(url)
        assert asset.status_code == 200, url
        name = url.rsplit("/", 1)[-1]
        if url.startswith(f"{live.url}/docs-assets/"):
            # The very file the package ships (Swagger UI's or ReDoc's build, the favicon).
            assert asset.content == (PACKAGE_ASSETS / name).read_bytes(), url
        if name.endswith(".css"):
            loads = [a or b for a, b in CSS_LOADS.findall(asset.text)]
            assert loads, "the stylesheet's url()s were not found: the pattern is wrong"
            assert [u for u in loads if not u.startswith("data:")] == [], url


def test_redoc_asks_for_no_google_fonts(live: Live) -> None:
    html = live.http.get("/redoc").text
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_let_the_browser_load_only_the_services_files(live: Live, page: str) -> None:
    """ReDoc's bundle asks for a CDN logo whatever its options; the policy refuses it."""
    policy = live.http.get(page).headers["content-security-policy"]
    directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    for name, sources in directives.items():
        for source in sources.split():
            assert source in {"'self'", "'unsafe-inline'", "data:", "blob:"}, (name, source)


def test_docs_assets_are_not_api_operations(live: Live) -> None:
    paths = live.http.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]

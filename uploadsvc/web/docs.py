"""The API's documentation pages, /docs (Swagger UI) and /redoc, working offline.

FastAPI's own pages load Swagger UI, ReDoc, a favicon and Google fonts from
CDNs, so on a closed network they stay blank. Here FastAPI's page builders
link the copies that the `fastapi-offline` package ships, served from
`/docs-assets/`, and ReDoc asks for no fonts.

Each page also carries a Content-Security-Policy that lets it load nothing
but this service's own files: ReDoc's bundle shows the "API docs by Redocly"
logo from a CDN whatever its options, and a browser under this policy refuses
that image without sending a request.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .urls import root_path

ASSETS_URL = "/docs-assets"
#: Swagger UI's and ReDoc's builds and a favicon, as the package ships them.
ASSETS = Path(str(files("fastapi_offline") / "static"))

#: Inline script and style: FastAPI's pages start Swagger UI with an inline
#: script, and both UIs style elements inline; ReDoc runs a worker from a blob.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets; `app` is built with `docs_url=None, redoc_url=None`."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    app.include_router(router)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = root_path(request)
    page = get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
    )
    return _own_files_only(page)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = root_path(request)
    page = get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    return _own_files_only(page)


def _own_files_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page

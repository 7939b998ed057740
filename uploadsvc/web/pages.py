"""Browser pages: one upload page per path, sharing one look (`base.html`,
`static/app.css`) and one script (`static/app.js`).

The forms post to the API routes. Without JavaScript a browser's post is
answered with a redirect to the upload's own page (`api._answer`); with it,
the script sends each file itself and follows its progress and status. The
pages load nothing but the app's own static files (see `headers.py`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..config import Settings
from ..pipeline import Pipeline
from ..resources import STATIC_DIR
from .access import STATIC_PREFIX
from .templating import templates

# Pages are for people, not API operations: they stay out of the OpenAPI description.
router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """The pages and their static files (under `STATIC_PREFIX`, which `access.py` opens)."""
    app.include_router(router)
    app.mount(STATIC_PREFIX.rstrip("/"), StaticFiles(directory=str(STATIC_DIR)), name="static")


@router.get("/", response_class=HTMLResponse, summary="Blocking upload page")
async def blocking_page(request: Request) -> HTMLResponse:
    return _form(request, action="/upload-blocking/", background=False)


@router.get("/background", response_class=HTMLResponse, summary="Background upload page")
async def background_page(request: Request) -> HTMLResponse:
    return _form(request, action="/upload-nonblocking/", background=True)


def _form(request: Request, action: str, background: bool) -> HTMLResponse:
    settings = request.app.state.settings
    pipeline: Pipeline = request.app.state.service.pipeline
    return templates.TemplateResponse(
        request,
        "upload.html",
        {
            "action": action,
            "background": background,
            "limit": settings.limits.max_upload_bytes,
            "backend": storage_label(settings.storage.url),
            "steps": [(name, _note(name, settings)) for name, _ in pipeline.processing],
        },
    )


def storage_label(url: str) -> str:
    """Where files go, for people: scheme, host and path; never a user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if not parts.scheme:
        return parts.path
    return f"{parts.scheme}://{host}{parts.path}"


def _note(name: str, settings: Settings) -> str:
    """What a person waiting should know of a step: how long the `delay` step takes."""
    seconds = settings.plugins.get(name, {}).get("seconds") if name == "delay" else None
    return f"{seconds:g} s" if isinstance(seconds, int | float) else ""

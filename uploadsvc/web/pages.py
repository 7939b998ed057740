"""Browser pages: one upload form per path. The forms post to the API routes,
which answer a browser with a page (see `templating.wants_html`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .templating import templates

router = APIRouter(include_in_schema=True)


@router.get("/", response_class=HTMLResponse, summary="Blocking upload page")
async def blocking_page(request: Request) -> HTMLResponse:
    return _form(request, action="/upload-blocking/", background=False)


@router.get("/background", response_class=HTMLResponse, summary="Background upload page")
async def background_page(request: Request) -> HTMLResponse:
    return _form(request, action="/upload-nonblocking/", background=True)


def _form(request: Request, action: str, background: bool) -> HTMLResponse:
    limit = request.app.state.settings.limits.max_upload_bytes
    return templates.TemplateResponse(
        request, "upload.html", {"action": action, "background": background, "limit": limit}
    )

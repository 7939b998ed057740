"""Browser pages: one upload form per path. The forms post to the API routes,
which answer a browser with a page (see `templating.wants_html`); so does the
list of uploads (`GET /uploads`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..config import Settings
from ..pipeline import Pipeline
from .templating import templates

# Pages are for people, not API operations: they stay out of the OpenAPI description.
router = APIRouter(include_in_schema=False)


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
            "steps": [(name, _note(name, settings)) for name, _ in pipeline.processing],
        },
    )


def _note(name: str, settings: Settings) -> str:
    """What a person waiting should know of a step: how long the `delay` step takes."""
    seconds = settings.plugins.get(name, {}).get("seconds") if name == "delay" else None
    return f"{seconds:g} s" if isinstance(seconds, int | float) else ""

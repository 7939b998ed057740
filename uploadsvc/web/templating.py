"""Jinja2 templates and the HTML-or-JSON choice.

A plain HTML form post prefers `text/html`; API clients send `*/*` or ask for
JSON. Only when HTML is strictly preferred does a route answer with a page.
"""

from __future__ import annotations

from fastapi.templating import Jinja2Templates
from starlette.requests import Request

from ..resources import TEMPLATES_DIR
from .urls import root_path


def _prefix(request: Request) -> dict[str, str]:
    """Every page's links start with `root_path`, the prefix a proxy serves the app under."""
    return {"root_path": root_path(request)}


templates = Jinja2Templates(directory=str(TEMPLATES_DIR), context_processors=[_prefix])


def human_bytes(size: int) -> str:
    """1073741824 -> "1 GiB", 1536 -> "1.5 KiB": binary units, as the script shows them."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "bytes":
        return f"{size:,} byte{'s' if size != 1 else ''}"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


templates.env.filters["human_bytes"] = human_bytes


def wants_html(request: Request) -> bool:
    html = json = 0.0
    for item in request.headers.get("accept", "").split(","):
        media, _, params = item.strip().partition(";")
        q = _quality(params)
        media = media.strip().lower()
        if media in ("text/html", "application/xhtml+xml"):
            html = max(html, q)
        elif media in ("application/json", "*/*", "application/*"):
            json = max(json, q)
    return html > json


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0

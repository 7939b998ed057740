"""The URLs the service emits, as a client behind a reverse proxy must follow them.

Stored records hold paths from the app's root (`/uploads/{id}/content`), so a
store reads the same through any proxy and prefix, and several proxies can
serve one store. The prefix the app is served under (`scope["root_path"]`:
`[server] root_path`, or uvicorn's `--root-path`) is added here, at the edge,
when a request is answered; with no prefix every answer is what it always was.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..models import UploadRecord


def root_path(request: Request) -> str:
    """The prefix the app is served under: "" or "/uploads-service"."""
    prefix: str = request.scope.get("root_path", "")
    return prefix


def public_path(request: Request, path: str) -> str:
    """`/uploads/{id}` as the client must ask for it."""
    return root_path(request) + path


def public_record(request: Request, record: UploadRecord) -> dict[str, Any]:
    """The record's JSON with its URLs under the prefix."""
    return under_root(record.public(), root_path(request))


def under_root(body: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A record's JSON (`url`, `derived`) with its paths under `prefix`; changed in place."""
    if prefix:
        body["url"] = prefix + body["url"]
        body["derived"] = {name: prefix + url for name, url in body["derived"].items()}
    return body

"""Who may call what: cross-site writes, tokens and scopes, CORS.

One pure ASGI middleware, `AccessGuard`, decides before any route runs, so a
refused request never has a byte of its body read, let alone stored, and an
unknown path asks for a token like any other (a client without one learns
nothing from a 404). Its answers are rendered by `errors.py`, in the one
shape. In order, outermost first:

1. Starlette's `CORSMiddleware` (only when `[cors] allow_origins` is set):
   it answers preflights for any path, `/files/` included, before routing
   and without a token, and adds its headers to every answer, 401 and 403
   included, so a script on an allowed origin can read why it was refused.
2. Cross-site writes: a POST, PUT, PATCH or DELETE from another origin not
   in `allow_origins` is 403 `forbidden`, with tokens or without.
3. Tokens (when configured): `Authorization: Bearer <token>`, or the sign-in
   cookie of the pages (`signin.py`), which counts on same-origin requests
   only; the scope the route needs is `needs()` below.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from starlette._utils import get_route_path  # the path exactly as the router matches it
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import Tokens
from ..config import Scope as TokenScope
from ..config import Settings
from ..errors import Forbidden, ServiceError, Unauthorized, error_response
from . import signin
from .origins import Site, request_site

#: Where the pages' stylesheet and script are served (`pages.py`); nothing secret.
STATIC_PREFIX = "/static/"

#: Methods that change something; the ones a page on another site must not send.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: What a request needs: nothing, any valid token, or a token with that scope.
Need = TokenScope | Literal["open", "signed_in"]

#: Headers a script on an allowed origin may send, and read in the answer:
#: the API's, and tus 1.0's for the resumable uploads at /files/.
CORS_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "OPTIONS")
CORS_REQUEST_HEADERS = (
    "Authorization", "Content-Type", "X-Request-ID", "Range", "If-Range", "If-None-Match",
    "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata", "Upload-Defer-Length",
    "Upload-Concat", "Upload-Checksum", "X-HTTP-Method-Override",
)  # fmt: skip
CORS_EXPOSED_HEADERS = (
    "Location", "ETag", "Content-Disposition", "Content-Range", "Accept-Ranges", "X-Request-ID",
    "Retry-After", "WWW-Authenticate", "Upload-Offset", "Upload-Length", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Expires", "Upload-Concat", "Tus-Version", "Tus-Resumable",
    "Tus-Max-Size", "Tus-Extension", "Tus-Checksum-Algorithm",
)  # fmt: skip


class Rules:
    """Route -> what it needs. Anything not named here needs a token whose
    scope follows the method, so a new route is never open by accident."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.open = {"/healthz", signin.SIGNIN, signin.SIGNOUT}
        if settings.metrics.public:
            self.open.add("/metrics")
        # Pages that show no upload: the forms (an upload-only token must see
        # them) and the API description. Any valid token will do.
        docs = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
        self.signed_in = {"/", "/background", *(path for path in docs if path)}

    def needs(self, method: str, path: str) -> Need:
        if path in self.open:
            return "open"
        # The pages' own stylesheet and script: the sign-in page needs them too.
        if method in ("GET", "HEAD") and path.startswith(STATIC_PREFIX):
            return "open"
        if method in ("GET", "HEAD") and path in self.signed_in:
            return "signed_in"
        if method in ("GET", "HEAD", "OPTIONS"):
            return "read"
        if method == "DELETE":
            return "delete"
        return "upload"  # POST, PATCH, PUT: uploads, and the tus routes to come


class AccessGuard:
    def __init__(
        self, app: ASGIApp, *, tokens: Tokens, rules: Rules, allow_origins: list[str]
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.rules = rules
        self.allow_origins = allow_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.check(scope)
        except ServiceError as refused:
            # Outside the exception handlers: render here, in the same shape.
            await error_response(Request(scope), refused)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        method = scope["method"]
        site = request_site(scope, headers, self.allow_origins)
        if method in UNSAFE_METHODS and site is Site.foreign:
            raise Forbidden(
                f"cross-site request refused: origin {headers.get('origin', '(unnamed)')} "
                "is not in [cors] allow_origins"
            )
        if not self.tokens.enabled:
            return
        need = self.rules.needs(method, get_route_path(scope))
        if need == "open":
            return
        scopes = self.authenticate(scope, headers, site)
        if need != "signed_in" and need not in scopes:
            raise Forbidden(f"this token lacks the {need!r} scope this request needs")

    def authenticate(self, scope: Scope, headers: Headers, site: Site) -> frozenset[TokenScope]:
        """The scopes of the request's token, or of its same-origin sign-in cookie."""
        authorization = headers.get("authorization")
        if authorization is not None:
            kind, _, token = authorization.strip().partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise Unauthorized("send the token as Authorization: Bearer <token>")
            # Header values arrive as latin-1; its bytes are what the client sent.
            scopes = self.tokens.check(token.strip().encode("latin-1"))
            if scopes is None:
                raise Unauthorized("the token is not valid")
            return scopes
        session = Request(scope).cookies.get(signin.COOKIE)
        # A cookie rides along with any request the browser sends for us: only
        # our own pages' requests may use it. Scripts elsewhere send the token.
        if session is not None and site is Site.same:
            scopes = self.tokens.check_session(session)
            if scopes is None:
                raise Unauthorized("the sign-in has expired: sign in again")
            scope.setdefault("state", {})["signed_in"] = True
            return scopes
        raise Unauthorized("a token is needed: send Authorization: Bearer <token>")


def install_access(app: FastAPI, settings: Settings) -> None:
    """Add the guard, CORS and (with tokens) the sign-in pages to `app`."""
    tokens = Tokens.from_settings(settings.auth)
    origins = settings.cors.allow_origins
    app.state.tokens = tokens
    if tokens.enabled:
        app.include_router(signin.router)
    app.add_middleware(
        AccessGuard, tokens=tokens, rules=Rules(app, settings), allow_origins=origins
    )
    if origins:  # added last: the outermost
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            # Tokens travel in Authorization, which needs no credentials mode;
            # the sign-in cookie is for our own pages and counts nowhere else.
            allow_credentials=False,
        )

"""Sign-in for the pages, which work without JavaScript, so without a way to
send `Authorization` themselves: the token is posted once in a form, and a
cookie carries a session from then on (see `auth.py` for what it holds).

The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other
site's page makes the browser send it), `Secure` when the request came over
HTTPS (directly, or through a trusted proxy's `X-Forwarded-Proto`), and lasts
`auth.SESSION_SECONDS`. The token never goes into a URL: the form posts it,
and the answer is a 303 to the path the user was going to, which is checked
to stay on this site. Both routes are open (`access.py`), but being POSTs
they are refused from other sites, so no page can sign a visitor in or out.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from ..auth import SESSION_SECONDS, Tokens
from ..errors import BadRequest, PayloadTooLarge
from .templating import templates
from .urls import public_path

SIGNIN = "/signin"
SIGNOUT = "/signout"
COOKIE = "uploadsvc_session"

#: The form holds a token and a path; anything larger is not our form.
MAX_FORM_BYTES = 16 << 10

router = APIRouter(include_in_schema=False)


@router.get(SIGNIN)
async def signin_page(request: Request, next: str | None = None) -> Response:
    return _page(request, _target(request, next))


@router.post(SIGNIN)
async def signin(request: Request) -> Response:
    form = await _small_form(request)
    target = _target(request, form.get("next"))
    tokens: Tokens = request.app.state.tokens
    session = tokens.open_session(form.get("token", "").strip().encode())
    if session is None:
        return _page(request, target, "That token is not valid.", status=401)
    answer = RedirectResponse(target, status_code=303)
    answer.set_cookie(
        COOKIE,
        session,
        max_age=SESSION_SECONDS,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return answer


@router.post(SIGNOUT)
async def signout(request: Request) -> Response:
    answer = RedirectResponse(public_path(request, SIGNIN), status_code=303)
    answer.delete_cookie(
        COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict"
    )
    return answer


def safe_next(path: str) -> str:
    """A path on this site, or `/`: never another host (`//evil.example`, `/\\evil`)."""
    ok = (
        path.startswith("/")
        and not path.startswith(("//", "/\\"))
        and path.isprintable()
        and len(path) <= 2000
    )
    return path if ok else "/"


def _target(request: Request, next: str | None) -> str:
    """Where a sign-in leads: `next` when it is safe, else the upload page, both as the
    client asks for them (under the prefix a proxy serves the app at)."""
    home = public_path(request, "/")
    return home if next is None or safe_next(next) == "/" else next


def _page(request: Request, next: str, error: str = "", status: int = 200) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return templates.TemplateResponse(
        request,
        "signin.html",
        {"next": next, "error": error, "hours": SESSION_SECONDS // 3600},
        status_code=status,
        headers=headers,
    )


async def _small_form(request: Request) -> dict[str, str]:
    """The urlencoded form, read whole but never beyond `MAX_FORM_BYTES`."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"a sign-in form is at most {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:
        raise BadRequest("not the sign-in form") from None
    return {name: values[0] for name, values in fields.items()}

"""Tokens, scopes, the pages' sign-in, cross-site writes and CORS, over real HTTP.

Access is decided before a route runs, so it does not depend on the storage:
these tests run on the local folder only. Every test here also checks that
no token reached a log line (uvicorn's access log included) or a URL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route

from tests.api.test_pages import BROWSER_ACCEPT
from tests.conftest import Backend, Live, make_settings
from tests.rawhttp import MULTIPART_TYPE, multipart_stream, post
from uploadsvc.config import Settings, parse_settings

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

ADMIN = "admin-7f3c9a1e5b2d4c6f"
READER = "reader-2b8e6d4f1a3c5e7d"
UPLOADER = "uploader-9d1f3b5a7c2e4f6a"
DELETER = "deleter-4e6a8c1d3f5b7a9c"
TOKENS = [
    ADMIN,
    {"token": READER, "scopes": ["read"]},
    {"token": UPLOADER, "scopes": ["upload"]},
    {"token": DELETER, "scopes": ["delete"]},
]
ALLOWED = "https://app.example.org"
EVIL = "https://evil.example"
#: Routes open without a token, by design (see web/access.py).
#: The pages' own stylesheet and script are open too: the sign-in page needs them.
OPEN = {"/healthz", "/signin", "/signout", "/static"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class LogCapture:
    """Every log line of the test, uvicorn's access log included, to look for tokens in."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        caplog.set_level(logging.DEBUG)
        names = ("uvicorn", "uvicorn.access", "uvicorn.error")
        self.loggers = [logging.getLogger(name) for name in names]

    def attach(self) -> None:
        """After each server start: uvicorn's own logging set-up replaces handlers and
        levels, and its loggers do not propagate."""
        for logger in self.loggers:
            logger.addHandler(self.caplog.handler)
            logger.setLevel(logging.DEBUG)

    def detach_and_check(self) -> None:
        for logger in self.loggers:
            logger.removeHandler(self.caplog.handler)
        records = [r for when in ("setup", "call") for r in self.caplog.get_records(when)]
        assert any(r.name == "uvicorn.access" for r in records)  # the capture works
        text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in records)
        for token in (ADMIN, READER, UPLOADER, DELETER):
            assert token not in text


@pytest.fixture
def start(
    live_factory: Callable[..., Live], caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[..., Live]]:
    """`live_factory`, with every log line checked for tokens at the end of the test."""
    capture = LogCapture(caplog)

    def started(settings: Settings | None = None) -> Live:
        live = live_factory(settings)
        capture.attach()
        return live

    yield started
    capture.detach_and_check()


def with_sections(backend: Backend, tmp_path: Path, **sections: Any) -> Settings:
    base = make_settings(backend, tmp_path, max_upload_bytes=128 << 20)
    return parse_settings(base.model_dump() | sections)


@pytest.fixture
def secured(start: Callable[..., Live], backend: Backend, tmp_path: Path) -> Live:
    return start(
        with_sections(backend, tmp_path, auth={"tokens": TOKENS}, cors={"allow_origins": [ALLOWED]})
    )


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.method, response.request.url)
    assert response.headers["www-authenticate"] == "Bearer"
    if response.request.method != "HEAD":
        body = response.json()
        assert body["code"] == "unauthorized" and body["detail"]


def assert_nothing_stored(live: Live) -> None:
    assert live.backend.leftovers() == []
    assert not live.staging.exists() or list(live.staging.iterdir()) == []


def upload(live: Live, headers: dict[str, str], data: bytes = b"hello") -> httpx.Response:
    return live.http.post("/upload-blocking/", files={"file": ("a.txt", data)}, headers=headers)


def big_body(size: int = 64 << 20) -> Iterator[bytes]:
    """A multipart body of `size` bytes, produced as it is sent."""
    return multipart_stream(os.urandom(256 << 10) for _ in range(size // (256 << 10)))


def every_route(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, inside included routers too (FastAPI keeps
    those apart since 0.16x)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            inner = prefix + getattr(route, "include_context").prefix  # noqa: B009
            yield from every_route(included.routes, inner)
        elif isinstance(route, Mount):  # static files: one that is in it
            asset = "/app.css" if route.path == "/static" else "/swagger-ui.css"
            yield "GET", prefix + route.path + asset
        else:
            assert isinstance(route, Route), route
            for method in sorted(route.methods or ()):
                yield method, prefix + route.path


def test_every_route_but_healthz_needs_a_token(secured: Live) -> None:
    """Every route the app has, and paths it does not: a new route cannot slip through."""
    checked = set()
    for method, route in every_route(secured.app.routes):
        path = re.sub(r"\{[^}]+\}", "0" * 28, route)
        response = secured.http.request(method, path)
        checked.add((method, route))
        # (an empty sign-in form is a 401 of its own)
        if route in OPEN or route.startswith("/static/"):
            assert "a token is needed" not in response.text, (method, path)
        else:
            assert_unauthorized(response)
    assert {("DELETE", "/uploads/{upload_id}"), ("GET", "/metrics"), ("GET", "/docs")} <= checked
    for method, path in [("GET", "/nowhere"), ("POST", "/files/"), ("PATCH", "/files/x")]:
        assert_unauthorized(secured.http.request(method, path))
    assert secured.http.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "authorization", [f"Bearer {ADMIN}x", f"Basic {ADMIN}", "Bearer", f"bearer {READER[:-1]}"]
)
def test_a_wrong_token_is_401(secured: Live, authorization: str) -> None:
    assert_unauthorized(secured.http.get("/uploads", headers={"Authorization": authorization}))
    assert_unauthorized(upload(secured, {"Authorization": authorization}))
    assert_nothing_stored(secured)


def test_the_right_token_opens_every_route(secured: Live) -> None:
    created = upload(secured, bearer(ADMIN))
    assert created.status_code == 201
    upload_id = created.json()["id"]
    for path in ["/", "/background", "/uploads", f"/uploads/{upload_id}", "/docs", "/metrics"]:
        assert secured.http.get(path, headers=bearer(ADMIN)).status_code == 200, path
    content = secured.http.get(f"/uploads/{upload_id}/content", headers=bearer(ADMIN))
    assert content.content == b"hello"
    lower = secured.http.get("/uploads", headers={"Authorization": f"bearer  {ADMIN}"})
    assert lower.status_code == 200  # the scheme is case-insensitive
    assert secured.http.delete(f"/uploads/{upload_id}", headers=bearer(ADMIN)).status_code == 204


def test_a_read_only_token_cannot_upload_or_delete(secured: Live) -> None:
    response = post(
        secured.url + "/upload-blocking/",
        big_body(),
        {"Content-Type": MULTIPART_TYPE, "Content-Length": str(64 << 20), **bearer(READER)},
    )
    assert response.status == 403 and b'"code":"forbidden"' in response.body
    assert response.sent < (32 << 20)  # refused from the headers, the body unread
    refused = secured.http.post(
        "/upload-nonblocking/", files={"file": ("a", b"x" * (5 << 20))}, headers=bearer(READER)
    )
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert_nothing_stored(secured)

    upload_id = upload(secured, bearer(ADMIN)).json()["id"]
    deleting = secured.http.delete(f"/uploads/{upload_id}", headers=bearer(READER))
    assert deleting.status_code == 403 and deleting.json()["code"] == "forbidden"
    assert secured.http.get(f"/uploads/{upload_id}", headers=bearer(READER)).status_code == 200


def test_scopes_upload_and_delete_alone(secured: Live) -> None:
    created = upload(secured, bearer(UPLOADER))
    assert created.status_code == 201
    upload_id = created.json()["id"]
    # A drop box: it sees the form, sends files, and reads nothing back.
    assert secured.http.get("/", headers=bearer(UPLOADER)).status_code == 200
    for path in ["/uploads", f"/uploads/{upload_id}", f"/uploads/{upload_id}/content", "/metrics"]:
        assert secured.http.get(path, headers=bearer(UPLOADER)).status_code == 403, path
    assert secured.http.delete(f"/uploads/{upload_id}", headers=bearer(UPLOADER)).status_code == 403
    assert upload(secured, bearer(DELETER)).status_code == 403
    assert secured.http.delete(f"/uploads/{upload_id}", headers=bearer(DELETER)).status_code == 204


def test_hashed_tokens_from_a_file(
    start: Callable[..., Live], backend: Backend, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(
        f"{hashlib.sha256(ADMIN.encode()).hexdigest()}  -\n"
        f"{hashlib.sha256(READER.encode()).hexdigest()} read\n",
        encoding="utf-8",
    )
    settings = with_sections(backend, tmp_path, auth={"tokens_file": str(tokens_file)})
    assert ADMIN not in settings.model_dump_json() and ADMIN not in tokens_file.read_text()
    live = start(settings)
    assert_unauthorized(live.http.get("/uploads"))
    assert upload(live, bearer(ADMIN)).status_code == 201
    assert live.http.get("/uploads", headers=bearer(READER)).status_code == 200
    assert upload(live, bearer(READER)).status_code == 403


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_a_token_unless_public(
    start: Callable[..., Live], backend: Backend, tmp_path: Path, public: bool
) -> None:
    live = start(
        with_sections(backend, tmp_path, auth={"tokens": [ADMIN]}, metrics={"public": public})
    )
    anonymous = live.http.get("/metrics")
    if public:
        assert anonymous.status_code == 200 and "uploadsvc_uploads_total" in anonymous.text
    else:
        assert_unauthorized(anonymous)
    assert live.http.get("/metrics", headers=bearer(ADMIN)).status_code == 200
    assert_unauthorized(live.http.get("/uploads"))  # public metrics open nothing else


def signed_in(live: Live, token: str = ADMIN, **headers: str) -> tuple[httpx.Response, str]:
    """POST the sign-in form as a browser does; the answer and the session cookie."""
    answer = live.http.post(
        "/signin",
        data={"token": token, "next": "/uploads?limit=5"},
        headers={"Accept": BROWSER_ACCEPT, **headers},
    )
    live.http.cookies.clear()  # each test sends the cookie itself, where it means to
    return answer, answer.cookies.get("uploadsvc_session") or ""


def browser(live: Live, cookie: str = "") -> dict[str, str]:
    """What a browser sends with a same-origin form post or navigation."""
    headers = {"Accept": BROWSER_ACCEPT, "Origin": live.url, "Sec-Fetch-Site": "same-origin"}
    return {**headers, "Cookie": f"uploadsvc_session={cookie}"} if cookie else headers


def test_pages_without_javascript_sign_in_upload_and_sign_out(secured: Live) -> None:
    page = secured.http.get("/", headers=browser(secured))
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert 'action="/signin"' in page.text and 'name="token"' in page.text
    assert 'name="next" value="/"' in page.text

    wrong, cookie = signed_in(secured, "not-a-token", Origin=secured.url)
    assert wrong.status_code == 401 and not cookie and "not valid" in wrong.text

    answer, cookie = signed_in(secured, Origin=secured.url)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/uploads?limit=5"  # where the user was going, no token
    set_cookie = answer.headers["set-cookie"]
    assert re.search(r"(?i)httponly", set_cookie) and re.search(r"(?i)samesite=strict", set_cookie)
    assert "secure" not in set_cookie.lower()  # plain http here
    assert ADMIN not in set_cookie and hashlib.sha256(ADMIN.encode()).hexdigest() not in set_cookie

    form = secured.http.get("/", headers=browser(secured, cookie))
    assert form.status_code == 200 and 'action="/signout"' in form.text
    done = upload(secured, browser(secured, cookie))
    assert done.status_code == 303 and done.headers["location"].startswith("/uploads/")
    record_page = secured.http.get(done.headers["location"], headers=browser(secured, cookie))
    assert record_page.status_code == 200 and "a.txt" in record_page.text
    listing = secured.http.get("/uploads", headers=browser(secured, cookie))
    assert listing.status_code == 200 and "a.txt" in listing.text

    out = secured.http.post("/signout", headers=browser(secured, cookie))
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    assert re.search(r'uploadsvc_session=(""|);', out.headers["set-cookie"])
    assert "max-age=0" in out.headers["set-cookie"].lower()
    tampered = cookie[:-1] + ("0" if cookie[-1] != "0" else "1")
    assert secured.http.get("/uploads", headers=browser(secured, tampered)).status_code == 401


def test_the_cookie_is_secure_over_https_and_next_stays_on_the_site(secured: Live) -> None:
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1, as from a local TLS proxy.
    answer, _ = signed_in(secured, **{"X-Forwarded-Proto": "https"})
    assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()
    for target in ["//evil.example/x", "https://evil.example", "/\\evil.example", "uploads"]:
        answer = secured.http.post("/signin", data={"token": ADMIN, "next": target})
        assert answer.status_code == 303 and answer.headers["location"] == "/"
    page = secured.http.get("/signin?next=/uploads", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and 'name="next" value="/uploads"' in page.text


@pytest.mark.parametrize(
    "headers",
    [{"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}],
)
def test_a_cross_site_write_is_refused_before_a_byte_is_stored(
    secured: Live, headers: dict[str, str]
) -> None:
    _, cookie = signed_in(secured)
    for credentials in ({"Cookie": f"uploadsvc_session={cookie}"}, bearer(ADMIN)):
        response = post(
            secured.url + "/upload-blocking/",
            big_body(),
            {
                "Content-Type": MULTIPART_TYPE,
                "Content-Length": str(64 << 20),
                "Accept": BROWSER_ACCEPT,
                **headers,
                **credentials,
            },
        )
        assert response.status == 403 and b"forbidden" in response.body
        assert response.sent < (32 << 20)
        assert_nothing_stored(secured)
    upload_id = upload(secured, bearer(ADMIN)).json()["id"]
    deleting = secured.http.delete(f"/uploads/{upload_id}", headers={**bearer(ADMIN), **headers})
    assert deleting.status_code == 403 and deleting.json()["code"] == "forbidden"
    # Nor can another site sign a visitor in (into an account of its choosing) or out.
    assert secured.http.post("/signin", data={"token": ADMIN}, headers=headers).status_code == 403
    assert secured.http.post("/signout", headers=headers).status_code == 403


def test_cross_site_writes_are_refused_without_tokens_too(start: Callable[..., Live]) -> None:
    live = start()
    assert upload(live, {"Origin": EVIL}).status_code == 403
    assert upload(live, {"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert_nothing_stored(live)
    assert upload(live, {"Origin": live.url}).status_code == 201  # our own pages
    assert upload(live, {"Sec-Fetch-Site": "same-origin"}).status_code == 201
    assert live.http.get("/uploads", headers={"Origin": EVIL}).status_code == 200  # reads: CORS


def test_preflights_are_answered_for_allowed_origins_without_a_token(secured: Live) -> None:
    for method, path, asked in [
        ("POST", "/upload-blocking/", "authorization, x-request-id"),
        ("DELETE", f"/uploads/{'0' * 28}", "authorization"),
        ("GET", f"/uploads/{'0' * 28}/content", "authorization, range, if-none-match"),
        ("PATCH", "/files/0a1b", "authorization, tus-resumable, upload-offset, content-type"),
        ("POST", "/files/", "authorization, tus-resumable, upload-length, upload-metadata"),
    ]:
        preflight = secured.http.options(
            path,
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": asked,
            },
        )
        assert preflight.status_code == 200, (path, preflight.text)
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        assert method in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert all(h.strip() in allowed for h in asked.split(","))
        assert "access-control-allow-credentials" not in preflight.headers


def test_a_script_on_an_allowed_origin_uploads_reads_and_deletes(secured: Live) -> None:
    script = {"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site", **bearer(ADMIN)}
    created = upload(secured, script, b"0123456789")
    assert created.status_code == 201
    assert created.headers["access-control-allow-origin"] == ALLOWED
    exposed = created.headers["access-control-expose-headers"].lower().replace(" ", "").split(",")
    assert {"location", "etag", "content-disposition", "content-range"} <= set(exposed)
    assert {"upload-offset", "upload-length", "tus-resumable", "tus-version"} <= set(exposed)
    location = created.headers["location"]
    part = secured.http.get(location + "/content", headers={**script, "Range": "bytes=2-4"})
    assert part.status_code == 206 and part.content == b"234"
    assert part.headers["access-control-allow-origin"] == ALLOWED
    deleted = secured.http.delete(location, headers=script)
    assert deleted.status_code == 204 and deleted.headers["access-control-allow-origin"] == ALLOWED
    # Refusals carry CORS headers too, so the script can read why.
    refused = secured.http.get("/uploads", headers={"Origin": ALLOWED})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED
    # The pages' cookie does not count for another origin: scripts send the token.
    _, cookie = signed_in(secured)
    with_cookie = {"Origin": ALLOWED, "Cookie": f"uploadsvc_session={cookie}"}
    assert secured.http.get("/uploads", headers=with_cookie).status_code == 401
    assert upload(secured, with_cookie).status_code == 401


def test_a_disallowed_origin_gets_no_cors_grant(secured: Live) -> None:
    preflight = secured.http.options(
        "/upload-blocking/",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    # Starlette still lists its expose headers; without Allow-Origin a browser grants nothing.
    read = secured.http.get("/uploads", headers={"Origin": EVIL, **bearer(ADMIN)})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers

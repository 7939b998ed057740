"""Where a request comes from: this site, an allowed origin, or a foreign one.

Pure functions of the request's scope and headers, so they are tested
without a server. A browser says where a request comes from in two headers
no page can forge: `Sec-Fetch-Site` (all current browsers) and `Origin`
(every cross-origin request and every POST). `Sec-Fetch-Site` is trusted
first: it needs no knowledge of our own public address, which a proxy may
hide. Without it, `Origin` is compared with our origin as the request names
it (the scheme, which uvicorn takes from `X-Forwarded-Proto` of a trusted
proxy, and `Host`). A request with neither header comes from no browser
(curl, scripts): it carries no ambient credential a page could abuse.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum

from starlette.datastructures import Headers
from starlette.types import Scope

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


class Site(Enum):
    same = "same"  # this origin, or no browser at all
    allowed = "allowed"  # another origin, listed in `[cors] allow_origins`
    foreign = "foreign"  # another origin, not listed


def request_site(scope: Scope, headers: Headers, allow_origins: Collection[str]) -> Site:
    origin = headers.get("origin")
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        # "same-site" is another host of our site (a sibling subdomain): another origin.
        cross = fetch_site.strip().lower() not in ("same-origin", "none")
    elif origin is not None:
        cross = normalise(origin) != own_origin(scope, headers)
    else:
        cross = False
    if not cross:
        return Site.same
    if origin is not None and ("*" in allow_origins or origin in allow_origins):
        return Site.allowed
    return Site.foreign


def own_origin(scope: Scope, headers: Headers) -> str:
    scheme = str(scope.get("scheme", "http"))
    return normalise(f"{scheme}://{headers.get('host', '')}")


def normalise(origin: str) -> str:
    """`HTTP://Example.org:80` -> `http://example.org`, as a browser serialises it."""
    origin = origin.strip().lower()
    scheme = origin.partition("://")[0]
    default = _DEFAULT_PORTS.get(scheme)
    return origin.removesuffix(default) if default else origin

"""URLs as messages may show them: never with a password.

Configured URLs may carry credentials (`redis://:secret@host`,
`sftp://user:secret@host/folder`); every message, log line and `uploadsvc
check` output that names one goes through `shown_url`.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit


def shown_url(url: str) -> str:
    """`url` with its password masked: `redis://:secret@host` -> `redis://:***@host`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can read: show nothing of what follows the scheme
        return url.partition(":")[0] + ":..."
    if password is None:
        return url
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()

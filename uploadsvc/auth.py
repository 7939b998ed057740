"""Tokens and page sessions: who may do what. No HTTP here (see `web/access.py`).

A token is known only by its sha256 digest: plain tokens from `[auth] tokens`
are hashed at start-up, and `[auth] tokens_file` holds digests only, so no
token needs to sit in a configuration file. A presented token is hashed and
its digest compared with *every* configured digest by `hmac.compare_digest`,
without stopping at a match, so neither the timing nor the order of the
comparisons says how close a guess came or which token matched.

A page session (the sign-in cookie) is `<expires>.<fingerprint>.<mac>`: the
fingerprint names the token's entry through a keyed hash, and the MAC is an
HMAC over both. It never holds the token or its digest, so a stolen cookie
reveals neither, and it expires. The key is derived from the configured
digests and scopes, so every worker and every instance with the same
configuration agrees on it without a shared secret to distribute, and any
change to the tokens signs every session out. The price: whoever can read the
digests (the tokens file) can make a session, so that file stays readable by
the service only, as a key file would.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from .config import ALL_SCOPES, AuthSettings, ConfigError, Scope

#: How long a sign-in lasts; the token itself does not expire.
SESSION_SECONDS = 12 * 3600

_SCOPES: frozenset[str] = frozenset(get_args(Scope))
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Grant:
    """One configured token: its sha256 digest and what it may do."""

    digest: bytes
    scopes: frozenset[Scope]


class Tokens:
    """The configured tokens; empty means the service is open."""

    def __init__(self, grants: Sequence[Grant]) -> None:
        self._grants = tuple(grants)
        canonical = "\n".join(
            sorted(f"{g.digest.hex()} {' '.join(sorted(g.scopes))}" for g in self._grants)
        )
        self._key = hmac.new(b"uploadsvc session v1", canonical.encode(), "sha256").digest()
        self._fingerprints = tuple(self._fingerprint(g.digest) for g in self._grants)

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> Tokens:
        """`[auth] tokens` and `tokens_file`; a bad file is a `ConfigError` line."""
        grants = [
            Grant(
                bytes.fromhex(entry.sha256)
                if entry.sha256 is not None
                else hashlib.sha256((entry.token or "").encode()).digest(),
                frozenset(entry.scopes),
            )
            for entry in auth.tokens
        ]
        if auth.tokens_file:
            grants += read_tokens_file(Path(auth.tokens_file))
        return cls(grants)

    @property
    def enabled(self) -> bool:
        return bool(self._grants)

    def check(self, token: bytes) -> frozenset[Scope] | None:
        """The scopes of `token`, or None when it is not a configured token."""
        return self._scopes_where(self._digests(), hashlib.sha256(token).digest())

    def open_session(self, token: bytes, now: float | None = None) -> str | None:
        """A cookie value for `token`, or None when it is not a configured token."""
        digest = hashlib.sha256(token).digest()
        if self._scopes_where(self._digests(), digest) is None:
            return None
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        signed = f"{expires}.{self._fingerprint(digest).decode()}"
        return f"{signed}.{self._mac(signed)}"

    def check_session(self, value: str, now: float | None = None) -> frozenset[Scope] | None:
        """The scopes of the session in a cookie, or None when forged, altered or expired."""
        if not value.isascii():
            return None
        expires, _, rest = value.partition(".")
        fingerprint, _, mac = rest.partition(".")
        if not hmac.compare_digest(self._mac(f"{expires}.{fingerprint}"), mac):
            return None
        if not expires.isdigit() or int(expires) <= (time.time() if now is None else now):
            return None
        return self._scopes_where(self._fingerprints, fingerprint.encode())

    def _digests(self) -> Iterable[bytes]:
        return (g.digest for g in self._grants)

    def _scopes_where(self, keys: Iterable[bytes], wanted: bytes) -> frozenset[Scope] | None:
        """Union of the scopes of every grant whose key equals `wanted`; compares them all."""
        found = False
        scopes: set[Scope] = set()
        for key, grant in zip(keys, self._grants, strict=True):
            if hmac.compare_digest(key, wanted):
                found = True
                scopes |= grant.scopes
        return frozenset(scopes) if found else None

    def _fingerprint(self, digest: bytes) -> bytes:
        return hmac.new(self._key, b"fingerprint " + digest, "sha256").hexdigest()[:32].encode()

    def _mac(self, signed: str) -> str:
        return hmac.new(self._key, signed.encode(), "sha256").hexdigest()


def read_tokens_file(path: Path) -> list[Grant]:
    """Lines `<sha256 hex> [scope ...]` (no scope: every scope); `#` starts a comment.

    A `-` after the digest, as `sha256sum` prints for standard input, is
    ignored. Errors name the line, never its content: a line that is not a
    digest may be a token pasted by mistake.
    """
    where = f"auth.tokens_file: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
        raise ConfigError(f"{where}: cannot read: {reason}") from None
    grants = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = [f for f in line.partition("#")[0].split() if f != "-"]
        if not fields:
            continue
        digest, *scopes = fields
        if len(digest) != 64 or not set(digest.lower()) <= _HEX:
            raise ConfigError(f"{where}: line {number}: not a sha256 digest (64 hex digits)")
        if not set(scopes) <= _SCOPES:
            raise ConfigError(f"{where}: line {number}: scopes are {', '.join(ALL_SCOPES)}")
        chosen = [s for s in ALL_SCOPES if s in scopes or not scopes]
        grants.append(Grant(bytes.fromhex(digest), frozenset(chosen)))
    if not grants:
        # An empty file must not leave the service open by surprise.
        raise ConfigError(f"{where}: holds no token digest")
    return grants

"""Tell other systems that an upload is final: a signed HTTP POST per event and URL.

    [processing]
    pipeline = ["webhook"]

    [plugins.webhook]
    urls = ["https://example.org/hooks/uploads"]
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"   # or any string of 16+ characters
    # timeout_seconds = 10      per request
    # attempts = 8              per URL and event
    # backoff_seconds = 1.0     first pause between attempts; doubles, with jitter, up to 60 s
    # deadline_seconds = 240    all attempts of one event to one URL end within this
    # events = ["completed", "failed"]

The plugin only overrides `finished`, so it adds no processing step: the
blocking answer never waits for a webhook, and a receiver that is down never
changes an upload.

What is sent
------------
`POST <url>` with `Content-Type: application/json` and the body::

    {"type": "upload.completed", "timestamp": "2026-11-25T10:00:01Z", "data": {<the record>}}

`type` is `upload.completed` or `upload.failed`; `timestamp` is when the
upload became final (its `completed_at`); `data` is the upload record exactly
as `GET /uploads/{id}` shows it. The body is the same bytes on every attempt
and for every URL.

Signing follows Standard Webhooks (https://www.standardwebhooks.com), so its
libraries can verify it. Three headers:

- `webhook-id`: `<upload id>.<event>` (`0193…c4.completed`), the same on
  every retry: the receiver's idempotency key;
- `webhook-timestamp`: this attempt's time, in unix seconds;
- `webhook-signature`: `v1,` then the base64 HMAC-SHA256 of
  `{webhook-id}.{webhook-timestamp}.{body}`, fresh for each attempt.

The HMAC key is the secret. A secret written `whsec_<base64>` (the form
Standard Webhooks tools generate) is that base64 decoded; any other string is
used as its UTF-8 bytes. (The `standardwebhooks` libraries base64-decode
every secret, prefixed or not: with a plain-string secret here, give them
`"whsec_" + base64(secret)`.) The secret is never logged.

How to verify (receiver side)
-----------------------------
Recompute the signature over the raw body bytes as received (not over JSON
parsed and dumped again), compare it in constant time, and refuse a
timestamp more than 5 minutes from your clock (older: a replay; newer: a
wrong clock). `headers` is the request's headers as web frameworks give them
(names in any case), or a dict with lower-case names::

    import base64, hashlib, hmac, time

    def verify(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
        if secret.startswith("whsec_"):
            key = base64.b64decode(secret.removeprefix("whsec_") + "==")  # padding optional
        else:
            key = secret.encode()
        try:
            msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
            if abs(time.time() - int(timestamp)) > 300:
                return False
            signatures = headers["webhook-signature"].split()
        except (KeyError, ValueError):
            return False
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = b"v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
        return any(hmac.compare_digest(expected, given.encode()) for given in signatures)

`webhook-signature` may hold several space-separated signatures (a rotated
key); one match is enough. Then deduplicate on `webhook-id`: the same event
may arrive twice (our request timed out after you had processed it).

Retries
-------
Each URL is delivered independently and concurrently. A 2xx answer is
delivered. 5xx, 408, 429, a timeout or a connection error is retried after
a pause: `backoff_seconds`, doubling with each attempt, jittered (between
half and all of it), at most 60 s; a `Retry-After` (seconds or HTTP date) in
the answer is honoured, also at most 60 s. Any other answer (4xx, and 3xx:
redirects are not followed, fix the URL) is permanent: logged, not retried.
Retries stop after `attempts`, or when the next pause would pass
`deadline_seconds`, with one warning naming the URL (by its place in `urls`
and its host: paths and queries may hold tokens) and the last error.

Why a deadline of its own: the pipeline cancels a `finished` hook after
`uploadsvc.plugin.FINISHED_TIMEOUT` (900 s). The defaults here take at most
about 200 s (7 pauses of at most 1+2+4+8+16+32+60 s, 8 requests of at most
10 s), below `deadline_seconds` = 240: the plugin gives up on its own terms,
logging what was lost, before the pipeline cuts it off. If the pipeline
cancels a delivery anyway (shutdown), it is logged as abandoned.

Known limitation: not durable
-----------------------------
Delivery runs inside the process that made the upload final, after the
record was written, and nothing about it is stored. A crash, a kill, or a
shutdown that outlasts the pipeline's grace for hooks in flight (10 s; each
abandoned delivery is logged) loses the events still being delivered or
waiting to be retried, and nothing sends them later: at least once holds
only while the process lives (and the receiver recovers within the retries);
across a crash an event is sent at most once, possibly never. A receiver
that must not miss an upload should also reconcile with `GET /uploads`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import UTC, datetime
from typing import Literal

import aiohttp
from pydantic import ConfigDict, Field, HttpUrl, SecretStr, field_validator

from uploadsvc import plugin

log = logging.getLogger("uploadsvc.plugins.webhook")

#: The longest pause between two attempts, whatever the backoff or `Retry-After` say.
MAX_PAUSE = 60.0
SECRET_PREFIX = "whsec_"
MIN_SECRET = 16  # characters of a plain secret, bytes of a decoded whsec_ one
USER_AGENT = "uploadsvc-webhook/1"
#: Answers worth another attempt besides 5xx: the receiver timed out, or asked us to slow down.
RETRYABLE_4XX = frozenset({408, 429})

Event = Literal["completed", "failed"]


class WebhookOptions(plugin.Options):
    """`[plugins.webhook]`; see the module docstring.

    Strict, like the service's own sections: TOML already gives the right
    types, so `attempts = "8"` is a mistake to report, not to coerce.
    """

    model_config = ConfigDict(strict=True)

    #: http(s) only; at least one, else the plugin would do nothing.
    urls: list[HttpUrl] = Field(min_length=1)
    #: A SecretStr, so that no repr, log line or error message shows it.
    secret: SecretStr
    timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    attempts: int = Field(default=8, ge=1, le=100)
    backoff_seconds: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    deadline_seconds: float = Field(default=240.0, gt=0, allow_inf_nan=False)
    events: list[Event] = Field(default=["completed", "failed"], min_length=1)

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, secret: SecretStr) -> SecretStr:
        signing_key(secret.get_secret_value())  # a ValueError names the problem, not the value
        return secret


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: `whsec_<base64>` decoded, any other string as UTF-8.

    `ValueError` (whose message never holds the secret) when it is too short
    or its base64 is broken: better at start-up than in every signature.
    """
    if secret.startswith(SECRET_PREFIX):
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            # Padding may be left out, as Standard Webhooks' libraries allow.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a {SECRET_PREFIX} secret must be followed by base64") from None
        if len(key) < MIN_SECRET:
            raise ValueError(f"a {SECRET_PREFIX} secret must decode to at least {MIN_SECRET} bytes")
        return key
    if len(secret) < MIN_SECRET:
        raise ValueError(f"must be at least {MIN_SECRET} characters long")
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def retryable(status: int) -> bool:
    """Whether an answer may change on another try: 5xx, 408 and 429."""
    return status >= 500 or status in RETRYABLE_4XX


def pause_before(attempt: int, backoff: float, retry_after: float | None) -> float:
    """Seconds to wait after failed attempt number `attempt` (from 1).

    Exponential, jittered between half and all of it (so instances that failed
    together do not retry in step), never above `MAX_PAUSE`; at least what
    the receiver asked for with `Retry-After`, itself capped.
    """
    ceiling = min(MAX_PAUSE, backoff * 2 ** min(attempt - 1, 32))
    pause = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        pause = max(pause, min(retry_after, MAX_PAUSE))
    return pause


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds from now (delay-seconds or an HTTP date); None if absent or odd."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Webhook(plugin.Processor[WebhookOptions]):
    """POSTs each final upload, signed, to every configured URL, with retries."""

    Options = WebhookOptions

    def __init__(self, options: WebhookOptions) -> None:
        super().__init__(options)
        self._key = signing_key(options.secret.get_secret_value())
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def finished(self, record: plugin.UploadRecord) -> None:
        """Deliver `upload.<status>` to every URL; returns once each is delivered or given up.

        Never raises for a receiver's failure: each URL's outcome is logged.
        """
        event = record.status.value
        if event not in ("completed", "failed") or event not in self.options.events:
            return
        msg_id = f"{record.id}.{event}"
        if self._closed:
            # Shutdown already closed the session: say what is lost rather than reopen it.
            log.warning("webhook %s: not sent, the plugin is closed (shutting down)", msg_id)
            return
        data = record.public()
        body = json.dumps(
            {
                "type": f"upload.{event}",
                "timestamp": data.get("completed_at") or _now_iso(),
                "data": data,
            },
            separators=(",", ":"),
        ).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.deadline_seconds
        session = self._session_now()
        outcomes = await asyncio.gather(
            *(
                self._deliver(session, i, str(url), msg_id, body, deadline)
                for i, url in enumerate(self.options.urls)
            ),
            return_exceptions=True,
        )
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                # A bug here, not the receiver's doing: one URL's must not hide the others'.
                log.error("webhook %s to %s: %r", msg_id, self._where(i), outcome, exc_info=outcome)

    async def close(self) -> None:
        """Close the HTTP session; `finished` sends nothing afterwards."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        """One session (one connection pool) for every delivery, made in the running loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT},
                # Each delivery stands alone: no cookie a receiver sets comes back.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _where(self, index: int) -> str:
        """A URL as logs name it: its place in `urls` and its host, never path or query."""
        url = self.options.urls[index]
        return f"urls[{index}] ({url.scheme}://{url.host}:{url.port})"

    async def _deliver(
        self,
        session: aiohttp.ClientSession,
        index: int,
        url: str,
        msg_id: str,
        body: bytes,
        deadline: float,
    ) -> bool:
        """Attempt one URL until delivered, refused for good, or out of attempts or time."""
        options = self.options
        deadline_s = options.deadline_seconds
        where = self._where(index)
        loop = asyncio.get_running_loop()
        last_error = ""
        attempt = 0
        doing = "before the first attempt"
        try:
            while attempt < options.attempts:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                attempt += 1
                doing = f"during attempt {attempt}"
                limit = min(options.timeout_seconds, remaining)
                timestamp = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(self._key, msg_id, timestamp, body),
                }
                retry_after: float | None = None
                try:
                    async with session.post(
                        url,
                        data=body,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=limit),
                        allow_redirects=False,
                    ) as response:
                        status = response.status
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                        said = "" if status < 300 else await _excerpt(response)
                except TimeoutError:
                    last_error = f"no answer within {limit:g} s"
                except aiohttp.ClientError as e:
                    last_error = str(e) or type(e).__name__
                else:
                    if 200 <= status < 300:
                        log.info("webhook %s to %s: delivered (attempt %d)", msg_id, where, attempt)
                        return True
                    last_error = f"HTTP {status}{said}"
                    if not retryable(status):
                        log.warning(
                            "webhook %s to %s: refused with %s; not retried",
                            msg_id,
                            where,
                            last_error,
                        )
                        return False
                if attempt == options.attempts:
                    break
                pause = pause_before(attempt, options.backoff_seconds, retry_after)
                if loop.time() + pause >= deadline:
                    last_error += f"; another attempt would pass the deadline ({deadline_s:g} s)"
                    break
                log.info(
                    "webhook %s to %s: attempt %d failed (%s); retrying in %.2f s",
                    msg_id,
                    where,
                    attempt,
                    last_error,
                    pause,
                )
                doing = f"waiting to retry after attempt {attempt} ({last_error})"
                await asyncio.sleep(pause)
        except asyncio.CancelledError:
            # Shutdown outlasted its grace, or the pipeline's timeout: the event is lost.
            log.warning("webhook %s to %s: abandoned %s, not delivered", msg_id, where, doing)
            raise
        log.warning(
            "webhook %s to %s: not delivered, giving up after %d attempt(s): %s",
            msg_id,
            where,
            attempt,
            last_error,
        )
        return False


async def _excerpt(response: aiohttp.ClientResponse) -> str:
    """The start of a refusal's body, for the log: receivers often say why there."""
    try:
        text = (await response.content.read(200)).decode("utf-8", "replace").strip()
    except (aiohttp.ClientError, TimeoutError):
        return ""
    return f": {text!r}" if text else ""


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")

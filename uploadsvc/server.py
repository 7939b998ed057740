"""uvicorn's httptools protocol with the limits it lacks.

uvicorn's httptools protocol takes request headers of any size and number (an
8 MiB header and 100,000 headers were accepted: 100 connections each sending
4 MiB of unfinished headers took the process from 56 to 479 MiB), waits for
them forever, and answers its own parse errors in plain text. `HttpProtocol`
adds, per request:

- the request line and headers are at most `MAX_HEADER_BYTES`, in at most
  `MAX_HEADERS` fields; beyond either the answer is 431 `headers_too_large`
  and the connection is closed. Counted as the bytes arrive, so a header that
  never ends is refused after the limit (and one read) too;
- headers must all arrive within `[limits] body_timeout_seconds` of the
  connection opening (first request) or of their first byte (later ones):
  else 408 `request_timeout`, and the connection is closed;
- uvicorn's parse errors ("Invalid HTTP request received.") are answered in
  the JSON error shape, 400 `bad_request`;
- an answer sent before its request body ended (a 413 on the declared length,
  503 `busy`, 507, 401...) leaves the connection open, and the rest of the body
  is read and dropped, so the client (or nginx) reads the answer instead of a
  reset; but the rest must arrive within `[limits] body_timeout_seconds` of the
  answer (and start within uvicorn's keep-alive timeout of it), else the
  connection is closed. (uvicorn stopped its keep-alive timer
  at the first byte after the answer and armed nothing after: a client sending
  a byte now and then held the connection forever, and one that sent the rest
  and went quiet did too.) Once the rest is in, the connection is idle as
  after any answer: uvicorn's keep-alive timeout applies;
- on shutdown (SIGTERM), a connection whose request body has sent nothing for
  `STALL_SECONDS` is closed at once, and the others are looked at again each
  second: a stalled client no longer holds the shutdown for its grace period.
  (Its upload aborts as for any client that leaves; nothing is kept.)

h11 has a header limit of its own, but it parses in Python: the throughput
of the upload path comes from httptools. `uploadsvc serve` runs with this
protocol; so does `uvicorn uploadsvc.app:app --http uploadsvc.server:HttpProtocol`.
Plain `uvicorn uploadsvc.app:app` runs without it: everything the app itself
does (body timeout, part limits, busy, free space) still holds there, the
limits above do not.

This subclasses uvicorn's internal `HttpToolsProtocol` (uvicorn is pinned;
tests/e2e/test_slow_clients.py covers every behaviour above through a real
`uploadsvc serve`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .config import Settings
from .errors import BadRequest, HeadersTooLarge, RequestTimeout, ServiceError

#: Request line and headers of one request: nginx's default allows 32 KiB, Node's 16 KiB.
MAX_HEADER_BYTES = 64 << 10
#: Header fields of one request (Apache's LimitRequestFields).
MAX_HEADERS = 100
#: On shutdown, a request body silent this long is a stalled client's.
STALL_SECONDS = 1.0
#: After a refusal, how long what the client still sends is read and dropped
#: before the connection closes: closing with unread input sends a reset, which
#: can destroy the answer before the client reads it.
LINGER_SECONDS = 2.0

_DEFAULT_HEADER_TIMEOUT = 60.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is on the protocol."""


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits in the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = _settings_of(self.app)
        self.body_timeout = (
            settings.limits.body_timeout_seconds if settings else _DEFAULT_HEADER_TIMEOUT
        )
        self._in_headers = False
        self._header_bytes = 0  # of the request line and headers, as the parser reports them
        self._header_reads = 0  # bytes read while the headers were incomplete
        self._header_count = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        self._refusal: ServiceError | None = None
        self._rest_deadline: asyncio.TimerHandle | None = None
        self._discarding = False
        self._last_read = 0.0

    # The connection.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        self._disarm_rest_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._last_read = self.loop.time()
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            # Counted after parsing, so these bytes may include the end of the
            # previous request's body when requests are pipelined: a client
            # pipelining uploads could see a 431 sooner than the limit.
            self._header_reads += len(data)
            if self._header_reads > MAX_HEADER_BYTES:
                self._refuse(_too_large(f"more than {MAX_HEADER_BYTES} bytes"))

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser refused (our refusals included)."""
        refusal, self._refusal = self._refusal, None
        self._refuse(refusal or BadRequest(f"invalid HTTP request: {msg}"))

    def shutdown(self) -> None:
        super().shutdown()
        self._close_if_stalled()

    def on_response_complete(self) -> None:
        cycle = self.cycle  # a pipelined request's, once its predecessor's body ended
        super().on_response_complete()
        answered = cycle is not None and cycle.response_complete
        if answered and cycle.more_body and not self.transport.is_closing():
            # Answered before the body ended: the rest is dropped as it comes, in time.
            self._disarm_rest_deadline()
            self._rest_deadline = self.loop.call_later(self.body_timeout, self._rest_late)

    # Parser callbacks.

    def on_message_begin(self) -> None:
        # A request that came in the read that ended the last one's body: not idle.
        self._unset_keepalive_if_required()
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = self._header_reads = self._header_count = 0
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._stop(_too_large(f"more than {MAX_HEADERS} header fields"))
        self._count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._rest_deadline is not None:
            # The rest of an answered request's body is in: the connection is idle now,
            # and data_received stopped uvicorn's keep-alive timer; arm it again.
            self._disarm_rest_deadline()
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        super().on_message_complete()

    # Helpers.

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._stop(_too_large(f"more than {MAX_HEADER_BYTES} bytes"))

    def _stop(self, error: ServiceError) -> None:
        self._refusal = error
        raise _Refused(error.detail)

    def _refuse(self, error: ServiceError) -> None:
        """Answer `error` in the JSON shape and close the connection (no request runs):
        half-close at once, read and drop for `LINGER_SECONDS`, then close."""
        self._disarm_header_deadline()
        if self.transport.is_closing() or self._discarding:
            return
        self.logger.info("refused a request from %s: %s", self.client, error.detail)
        shape = {"detail": error.detail, "code": error.code}  # as errors.py renders it
        body = json.dumps(shape, separators=(",", ":")).encode()
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._discarding = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A request being answered (a parse error in its body): it is over.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.body_timeout, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is still being answered (pipelining): not this one's fault yet.
            self._arm_header_deadline()
            return
        self._refuse(
            RequestTimeout(
                f"the request headers did not arrive within {self.body_timeout:g} s "
                "([limits] body_timeout_seconds)"
            )
        )

    def _disarm_rest_deadline(self) -> None:
        if self._rest_deadline is not None:
            self._rest_deadline.cancel()
            self._rest_deadline = None

    def _rest_late(self) -> None:
        self._rest_deadline = None
        if not self.transport.is_closing():
            self.logger.info(
                "closed %s: the rest of an answered request's body did not arrive within "
                "%g s ([limits] body_timeout_seconds)",
                self.client,
                self.body_timeout,
            )
            self.transport.close()

    def _close_if_stalled(self) -> None:
        """While shutting down: close the connection if its request body stalled."""
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or cycle.response_complete:
            return
        silent = self.loop.time() - self._last_read
        if cycle.more_body and not self.flow.read_paused and silent >= STALL_SECONDS:
            self.logger.info("shutting down: closed %s, its request body stalled", self.client)
            self.transport.close()
            return
        self.loop.call_later(STALL_SECONDS, self._close_if_stalled)


def _too_large(what: str) -> HeadersTooLarge:
    return HeadersTooLarge(f"request line and headers: {what}")


def _settings_of(app: object) -> Settings | None:
    """The settings of the uploadsvc app inside uvicorn's middleware, if it is one."""
    for _ in range(8):
        settings = getattr(getattr(app, "state", None), "settings", None)
        if isinstance(settings, Settings):
            return settings
        app = getattr(app, "app", None)
        if app is None:
            break
    return None

"""Logging: one line per event on stderr, readable text or JSON (`[logging] format`).

Every line goes through one structlog `ProcessorFormatter` on one handler:
the service's own `logging.getLogger(__name__)` calls, uvicorn's, every
library's, and the two structured lines this service writes:

- `request`, one per HTTP request (`web/requestlog.py`);
- `upload`, one per status change of an upload: created (`queued`,
  `processing` or `completed`), `storing`, `processing`, `completed`,
  `failed`, `deleted` (`upload_changed`, a listener of the records).

A line written while a request is served carries its `request_id`; jobs run
later, in no request (`queues.py`), and carry the upload id instead. No line
formats a request header, a token, the bytes of an upload or the
configuration's options; as a last guard, every value of a setting whose
name says it is secret (`key`, `secret`, `token`, `password`, ...) and every
password in a configured URL is replaced by `[redacted]` in each finished
line, whatever wrote it.
"""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from structlog.dev import ConsoleRenderer, plain_traceback
from structlog.processors import JSONRenderer, TimeStamper, format_exc_info
from structlog.stdlib import ProcessorFormatter, add_log_level, add_logger_name
from structlog.typing import EventDict, WrappedLogger

from .config import Settings
from .models import Status, StoredRecord, age_seconds

#: Setting names whose values never appear in a line (substrings, lower case).
SECRET_NAMES = ("key", "secret", "token", "password", "passwd", "credential", "sas", "signature")
#: Shorter values are not masked: a three-letter "secret" would mask words everywhere.
_SHORTEST_SECRET = 4
REDACTED = "[redacted]"


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger over the stdlib logger `name`: fields as keywords, rendered
    by the formatter `setup` installs (or dropped like any stdlib line without it)."""
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger(name),
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[structlog.stdlib.filter_by_level, ProcessorFormatter.wrap_for_formatter],
    )
    return logger


# The request being served.


@dataclass(slots=True)
class RequestContext:
    """What the lines written during one request share; the upload it created or touched."""

    request_id: str
    upload_id: str | None = None


_request: ContextVar[RequestContext | None] = ContextVar("uploadsvc_request", default=None)


def bind_request(context: RequestContext) -> Token[RequestContext | None]:
    return _request.set(context)


def unbind_request(token: Token[RequestContext | None]) -> None:
    _request.reset(token)


def _add_request_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    context = _request.get()
    if context is not None:
        event.setdefault("request_id", context.request_id)
    return event


# Upload state changes.

_uploads = get_logger("uploadsvc.uploads")


def upload_changed(upload_id: str, before: StoredRecord | None, after: StoredRecord | None) -> None:
    """One `upload` line per record created, moved to a new status, or deleted."""
    context = _request.get()
    if context is not None and context.upload_id is None:
        context.upload_id = upload_id
    age_ms = round(age_seconds(upload_id) * 1000)  # the id starts with its creation time
    if after is None:
        _uploads.info("upload", upload_id=upload_id, status="deleted", age_ms=age_ms)
        return
    fields: dict[str, Any] = {"upload_id": upload_id, "status": after.status.value}
    if before is not None:
        fields["previous"] = before.status.value
    fields |= {"size": after.size, "age_ms": age_ms}
    if after.attempts:
        fields["attempts"] = after.attempts
    if after.status is Status.failed:
        fields |= {"error": after.error, "rejected": after.rejected}
    quiet = after.status is not Status.failed or after.rejected
    (_uploads.info if quiet else _uploads.warning)("upload", **fields)


# Set-up.


def setup(settings: Settings) -> None:
    """Route every logger through the one formatter (`serve`, `worker`, `uploadsvc.app`)."""
    logging.config.dictConfig(config(settings))
    logging.captureWarnings(True)  # warnings become lines in the format, not raw stderr


def config(settings: Settings) -> dict[str, Any]:
    """The `dictConfig` of `setup` (uvicorn is told to leave it alone: `cli.py`)."""
    level = settings.logging.level.upper()
    formatter = _formatter(settings)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"uploadsvc": {"()": lambda: formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "uploadsvc",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's loggers lose their own handlers: their lines go through ours.
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            # Replaced by the request line: no handler, so uvicorn skips its access log.
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def _formatter(settings: Settings) -> logging.Formatter:
    renderer: list[Any]
    if settings.logging.format == "json":
        renderer = [format_exc_info, _when_first, JSONRenderer()]
    else:  # plain tracebacks: a fancier formatter could print local variables
        plain = ConsoleRenderer(colors=False, exception_formatter=plain_traceback, sort_keys=False)
        renderer = [plain]
    return ProcessorFormatter(
        processors=[
            add_log_level,
            add_logger_name,
            TimeStamper(fmt="iso", utc=True),
            _add_request_id,
            ProcessorFormatter.remove_processors_meta,
            *renderer,
            Redact(secrets_of(settings)),
        ],
    )


def _when_first(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Time, level, source and event lead each JSON line, as they do each text line."""
    lead: EventDict = {
        k: event.pop(k) for k in ("timestamp", "level", "logger", "event") if k in event
    }
    lead.update(event)
    return lead


class Redact:
    """The last step, on the finished line: every secret, as written and as JSON escapes it."""

    def __init__(self, secrets: set[str]) -> None:
        forms = {s for secret in secrets for s in (secret, json.dumps(secret)[1:-1])}
        self.forms = sorted(forms, key=len, reverse=True)  # a longer one may contain a shorter

    def __call__(self, _: WrappedLogger, __: str, line: object) -> str:
        assert isinstance(line, str), "Redact comes after the renderer"
        for secret in self.forms:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line


def secrets_of(settings: Settings) -> set[str]:
    """Values of secret-named settings (storage and staging options, plugin options, tokens)
    and passwords in URLs, anywhere in the configuration."""
    return {s for s in _secrets(settings.model_dump(), "") if len(s) >= _SHORTEST_SECRET}


def _secrets(value: Any, name: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets(item, str(key).lower())
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets(item, name)
    elif isinstance(value, str):
        if any(part in name for part in SECRET_NAMES):
            yield value
        elif "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                yield password

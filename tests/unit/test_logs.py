"""The log format: one line per event, JSON or text, request ids, and no secret
from the configuration in any line, whoever wrote it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from uploadsvc import logs
from uploadsvc.config import Settings, parse_settings

KEY, SECRET, TOKEN = "AKIAFAKEKEY0001", 'fake"secret/with\\escapes', "sessiontoken-123"


def settings(fmt: str = "json") -> Settings:
    return parse_settings(
        {
            "storage": {
                "url": "s3://bucket/uploads",
                "options": {
                    "endpoint_url": "http://127.0.0.1:9000",
                    "key": KEY,
                    "secret": SECRET,
                    "client_kwargs": {"aws_session_token": TOKEN, "region_name": "eu-west-1"},
                },
            },
            "staging": {"url": "az://c/staging", "options": {"account_key": "azure-key-42"}},
            "queue": {"url": "redis://:redis-password@127.0.0.1:6379/0"},
            "plugins": {"webhook": {"urls": ["https://example.org/h"], "secret": "whsec-9"}},
            "logging": {"format": fmt},
        }
    )


def test_secrets_are_found_wherever_the_configuration_holds_them() -> None:
    found = logs.secrets_of(settings())
    assert found == {KEY, SECRET, TOKEN, "azure-key-42", "redis-password", "whsec-9"}


def test_short_values_are_not_secrets_worth_masking() -> None:
    quiet = parse_settings({"storage": {"url": "memory://x", "options": {"key": "abc"}}})
    assert logs.secrets_of(quiet) == set()


@pytest.fixture
def output() -> Iterator[Callable[[Settings], io.StringIO]]:
    """A stream with the service's formatter on the loggers the tests write to."""
    names = ["test.logs"]
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.handlers, lg.level, lg.propagate) for lg in loggers]

    def attach(settings: Settings) -> io.StringIO:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.config(settings)["formatters"]["uploadsvc"]["()"]())
        for lg in loggers:
            lg.handlers, lg.level, lg.propagate = [handler], logging.INFO, False
        return stream

    yield attach
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers, lg.level, lg.propagate = handlers, level, propagate


def test_json_lines_from_stdlib_and_structlog_with_the_request_id(
    output: Callable[[Settings], io.StringIO],
) -> None:
    stream = output(settings("json"))
    token = logs.bind_request(logs.RequestContext("req-1"))
    try:
        logging.getLogger("test.logs").warning("storage %s failed with %s", "s3://b", KEY)
        logs.get_logger("test.logs").info("request", status=201, note=f"secret {SECRET}")
        try:
            raise ValueError(f"a bug with {TOKEN}")
        except ValueError:
            logging.getLogger("test.logs").exception("oops")
    finally:
        logs.unbind_request(token)
    logging.getLogger("test.logs").info("outside any request")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 4, stream.getvalue()
    first, second, third, fourth = lines
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert first["event"] == "storage s3://b failed with [redacted]"
    assert (first["level"], first["logger"]) == ("warning", "test.logs")
    assert first["request_id"] == "req-1"
    assert (second["event"], second["status"]) == ("request", 201)
    assert second["note"] == "secret [redacted]"
    assert "ValueError: a bug with [redacted]" in third["exception"]
    assert "request_id" not in fourth
    for secret in (KEY, SECRET, TOKEN):
        assert secret not in stream.getvalue() and json.dumps(secret)[1:-1] not in stream.getvalue()


def test_text_lines_are_readable_key_value_pairs(
    output: Callable[[Settings], io.StringIO],
) -> None:
    stream = output(settings("text"))
    logs.get_logger("test.logs").info("request", method="GET", status=404, secret_ish=KEY)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("[test.logs] method=GET status=404 secret_ish=[redacted]"), line
    assert line.split()[1:3] == ["[info", "]"] and line.split()[3] == "request"
    datetime.fromisoformat(line.split()[0])

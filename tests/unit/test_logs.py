"""The log format: one line per event, JSON or text, request ids, upload lines, and
no secret from the configuration in any line, whoever wrote it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from uploadsvc import logs
from uploadsvc.config import Settings, parse_settings
from uploadsvc.models import Status, StoredRecord
from uploadsvc.records import Records
from uploadsvc.storage import open_storage

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
    names = ["test.logs", "uploadsvc.uploads"]
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


def record(status: Status, **changes: object) -> StoredRecord:
    return StoredRecord.model_validate(
        {
            "id": "01a22ab65cd6e6b7a39a0919a11c",
            "filename": "report.pdf",
            "size": 12345,
            "content_type": "application/pdf",
            "sha256": "0" * 64,
            "status": status,
            "created_at": datetime.now(UTC),
            "url": "/uploads/x/content",
            **changes,
        }
    )


def test_upload_lines_for_each_kind_of_change(output: Callable[[Settings], io.StringIO]) -> None:
    stream = output(settings("json"))
    upload_id = record(Status.queued).id
    context = logs.RequestContext("req-2")
    token = logs.bind_request(context)
    try:
        logs.upload_changed(upload_id, None, record(Status.queued))
    finally:
        logs.unbind_request(token)
    logs.upload_changed(upload_id, record(Status.queued), record(Status.storing))
    failed = record(Status.failed, error="storing failed after 5 attempts: gone", attempts=5)
    logs.upload_changed(upload_id, record(Status.storing), failed)
    logs.upload_changed(upload_id, None, None)
    created, storing, failing, deleted = (json.loads(x) for x in stream.getvalue().splitlines())
    assert context.upload_id == upload_id  # the request line will name it
    assert {k: created[k] for k in ("event", "upload_id", "status", "size", "request_id")} == {
        "event": "upload",
        "upload_id": upload_id,
        "status": "queued",
        "size": 12345,
        "request_id": "req-2",
    }
    assert "previous" not in created and created["age_ms"] >= 0
    assert (storing["status"], storing["previous"], "request_id" in storing) == (
        "storing",
        "queued",
        False,
    )
    assert (failing["level"], failing["error"], failing["attempts"], failing["rejected"]) == (
        "warning",
        "storing failed after 5 attempts: gone",
        5,
        False,
    )
    assert (deleted["status"], deleted["upload_id"]) == ("deleted", upload_id)
    assert "report.pdf" not in stream.getvalue()  # names are the client's: not logged


def test_records_tell_each_creation_status_move_and_deletion_once() -> None:
    """Renewals and retries rewrite the record in the same status: no line for those."""
    heard: list[tuple[str | None, str | None]] = []

    def listen(_: str, before: StoredRecord | None, after: StoredRecord | None) -> None:
        heard.append((before and before.status.value, after and after.status.value))

    async def lifecycle() -> None:
        records = Records(open_storage(f"memory://logs-{uuid.uuid4().hex}", {}), listeners=[listen])
        created = record(Status.queued)
        await records.create(created)
        steps = [{"attempts": 1}, {"status": Status.storing}, {"attempts": 2}]
        for update in [*steps, {"status": Status.completed}]:
            await records.change(created.id, lambda r, u=update: r.model_copy(update=u))
        await records.delete(created.id)

    asyncio.run(lifecycle())
    assert heard == [
        (None, "queued"),
        ("queued", "storing"),
        ("storing", "completed"),
        (None, None),
    ]

"""The shipped `webhook` plugin against a real receiver.

The receiver is an HTTP server on 127.0.0.1 in a thread. It checks every
request with the `verify` function of the plugin's own docstring (taken from
the docstring and run, so the instructions users follow are the ones tested),
records what came, and answers as a test tells it: an error the first times,
slowly, or not until another receiver has been reached.

The plugin is loaded from plugins/ by name, as a user's configuration would.
Tests through the service (a real uvicorn) show when and what is announced;
tests that call `finished` directly pin the retry rules, which need no upload.
Nothing waits a fixed time to conclude that something did not happen: it waits
for a later event that would have come after it (a log line, a delivery).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.api.helpers import wait_for_status
from tests.backends import Backend
from tests.conftest import Live, make_settings, serving
from uploadsvc import pipeline as pipeline_module
from uploadsvc.app import create_app
from uploadsvc.config import ConfigError, Settings, parse_settings
from uploadsvc.models import Status, UploadRecord, new_id, now
from uploadsvc.pipeline import Pipeline, load_pipeline
from uploadsvc.plugin import Options, Processor, Upload

#: A Standard Webhooks secret (whsec_ + base64 of 32 bytes) and a plain one.
SECRET = "whsec_" + base64.b64encode(b"uploadsvc webhook tests: 32 byte").decode()
PLAIN_SECRET = "a plain secret, used as UTF-8"
#: Small pauses and short waits: the rules, not the defaults, are under test.
FAST: dict[str, Any] = {"backoff_seconds": 0.01, "timeout_seconds": 5.0, "attempts": 4}
LOGGER = "uploadsvc.plugins.webhook"

# The Standard Webhooks reference vector (their libraries' test suites).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# The plugin, loaded the way the service loads it.


def hook_settings(urls: list[str], **options: Any) -> Settings:
    return parse_settings(
        {
            "processing": {"pipeline": ["webhook"]},
            "plugins": {"webhook": {"urls": urls, "secret": SECRET, **FAST, **options}},
        }
    )


def load_hook(urls: list[str], **options: Any) -> Processor[Any]:
    """A fresh plugin instance from plugins/webhook.py, as `[plugins.webhook]` makes it."""
    return load_pipeline(hook_settings(urls, **options)).plugins[0]


@functools.cache
def webhook_module() -> ModuleType:
    return sys.modules[type(load_hook(["http://127.0.0.1:9/"])).__module__]


VerifyFunction = Callable[[str, Mapping[str, str], bytes], bool]


@functools.cache
def docstring_verify() -> VerifyFunction:
    """The `verify` the plugin's docstring gives receivers, run as written."""
    doc = webhook_module().__doc__ or ""
    start = doc.index("    import base64, hashlib, hmac, time")
    end = doc.index("\n\n`webhook-signature` may hold", start)
    namespace: dict[str, Any] = {"Mapping": Mapping}
    exec(textwrap.dedent(doc[start:end]), namespace)
    verify: VerifyFunction = namespace["verify"]
    return verify


# The receiver.


@dataclass
class Answer:
    """What the receiver answers one request, and how long it makes the sender wait."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Seconds to wait before answering; cut short when `until` is set (or the receiver closes).
    hold: float = 0.0
    until: threading.Event | None = None


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: bool
    answer: Answer
    arrived: float  # time.monotonic()
    #: For an answer held `until` an event: whether the event came while holding.
    saw_until: bool | None = None

    @property
    def json(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


class Receiver:
    """A webhook endpoint: verifies as the docstring says, records, answers as scripted.

    `answers` are used in order, one per request, then 200s; a request that
    fails verification gets 401, whatever the script says.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.answers: list[Answer] = []
        self.deliveries: list[Delivery] = []
        self.arrived = threading.Event()
        self.closing = threading.Event()
        self._changed = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=functools.partial(self._server.serve_forever, poll_interval=0.05), daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """With a path and a query token, as real hooks have: logs must show neither."""
        return f"http://127.0.0.1:{self.port}/hooks/uploads?token=do-not-log-me"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def named(self, index: int = 0) -> str:
        """How the plugin's log lines name this receiver as `urls[index]`."""
        return f"urls[{index}] (http://127.0.0.1:{self.port})"

    def take(self, headers: dict[str, str], body: bytes) -> Delivery:
        verified = docstring_verify()(self.secret, headers, body)
        with self._changed:
            answer = self.answers.pop(0) if self.answers else Answer()
            if not verified:
                answer = Answer(401, body=b"signature does not verify")
            delivery = Delivery(headers, body, verified, answer, time.monotonic())
            self.deliveries.append(delivery)
            self._changed.notify_all()
        self.arrived.set()
        return delivery

    def wait_for(self, count: int, timeout: float = 15) -> list[Delivery]:
        """The deliveries once there are at least `count` (fails after `timeout`)."""
        with self._changed:
            reached = self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout)
            assert reached, f"{len(self.deliveries)} deliveries, expected {count}"
            return list(self.deliveries)

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], receiver: Receiver
    ) -> None:
        super().__init__(address, handler)
        self.receiver = receiver


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        assert isinstance(self.server, _Server)
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        delivery = receiver.take({k.lower(): v for k, v in self.headers.items()}, body)
        answer = delivery.answer
        if answer.until is not None:
            delivery.saw_until = answer.until.wait(answer.hold)
        elif answer.hold:
            receiver.closing.wait(answer.hold)
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except OSError:
            pass  # the sender stopped waiting (its timeout, or its shutdown)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `deliveries`, not stderr."""


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(secret: str = SECRET) -> Receiver:
        made.append(Receiver(secret))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


# Shared fixtures and helpers.


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The local folder only: the plugin never touches the storage."""
    from tests.backends import local

    yield from local.make(request, tmp_path)


@pytest.fixture(autouse=True)
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log line of the test (the service's threads included); none may show a secret."""
    caplog.set_level(logging.INFO)
    yield caplog
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET, SECRET.removeprefix("whsec_"), PLAIN_SECRET):
        assert secret not in text
    assert "do-not-log-me" not in text  # URLs are logged by place and host only


def wait_for_log(caplog: pytest.LogCaptureFixture, fragment: str, timeout: float = 15) -> str:
    """The first log line containing `fragment`, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        for record in list(caplog.records):
            if fragment in (message := record.getMessage()):
                return message
        assert time.monotonic() < deadline, f"no log line with {fragment!r}"
        time.sleep(0.02)


def plugin_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in list(caplog.records) if r.name == LOGGER]


def service_settings(backend: Backend, tmp_path: Path, urls: list[str], **options: Any) -> Settings:
    """The tests' usual settings plus `[processing] pipeline = ["webhook"]`."""
    webhook = {"urls": urls, "secret": SECRET, **FAST, **options}
    return make_settings(
        backend,
        tmp_path,
        max_upload_bytes=1 << 20,
        pipeline=["webhook"],
        plugins={"webhook": webhook},
    )


def final_record(status: Status = Status.completed) -> UploadRecord:
    upload_id = new_id()
    return UploadRecord(
        id=upload_id,
        filename="a.txt",
        size=1,
        content_type="text/plain",
        sha256="0" * 64,
        status=status,
        created_at=now(),
        completed_at=now(),
        url=f"/uploads/{upload_id}/content",
    )


def announce(hook: Processor[Any], record: UploadRecord) -> None:
    """Call `finished` as the pipeline would, then `close`, in one event loop."""

    async def run() -> None:
        try:
            await hook.finished(record)
        finally:
            await hook.close()

    asyncio.run(run())


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Picky(Processor[Options]):
    """Fails every upload named bad.txt, passes the others."""

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        if upload.record.filename == "bad.txt":
            raise ValueError("cannot parse this file")
        return {}


# Signing, and the verification the docstring teaches.


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    module = webhook_module()
    key = module.signing_key(VECTOR_SECRET)
    assert module.sign(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_the_docstring_verify_accepts_the_reference_vector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Independent of the plugin's signing code: the recipe users copy checks out."""
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    verify = docstring_verify()
    assert not verify(VECTOR_SECRET, headers, VECTOR_BODY)  # 2021: far too old
    monkeypatch.setattr(time, "time", lambda: VECTOR_TIMESTAMP + 299.0)
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY)


def test_a_plain_secret_is_the_key_as_its_utf8_bytes() -> None:
    module = webhook_module()
    body, timestamp = b'{"type":"upload.completed"}', 1_700_000_000
    expected = hmac.new(
        PLAIN_SECRET.encode(), f"abc.completed.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()
    signature = module.sign(module.signing_key(PLAIN_SECRET), "abc.completed", timestamp, body)
    assert signature == "v1," + base64.b64encode(expected).decode()


def test_a_whsec_secret_without_its_base64_padding_is_the_same_key() -> None:
    module = webhook_module()
    padded = "whsec_" + base64.b64encode(b"seventeen bytes!!").decode()
    assert padded.endswith("=")
    assert (
        module.signing_key(padded.rstrip("=")) == module.signing_key(padded) == b"seventeen bytes!!"
    )


def test_verify_refuses_what_was_tampered_with_signed_otherwise_or_stale() -> None:
    module, verify = webhook_module(), docstring_verify()
    body = b'{"type":"upload.completed","data":{"size":1}}'

    def signed(secret: str, at: int, msg_id: str = "x.completed") -> dict[str, str]:
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(at),
            "webhook-signature": module.sign(module.signing_key(secret), msg_id, at, body),
        }

    fresh = int(time.time())
    good = signed(SECRET, fresh)
    assert verify(SECRET, good, body)
    assert verify(PLAIN_SECRET, signed(PLAIN_SECRET, fresh), body)
    assert not verify(SECRET, good, body.replace(b"1", b"2"))  # tampered body
    assert not verify(PLAIN_SECRET, good, body)  # wrong secret
    assert not verify(SECRET, {**good, "webhook-id": "y.completed"}, body)  # id is signed
    assert not verify(SECRET, {**good, "webhook-timestamp": str(fresh + 1)}, body)
    assert not verify(SECRET, signed(SECRET, fresh - 301), body)  # replayed
    assert not verify(SECRET, signed(SECRET, fresh + 301), body)  # from the future
    assert not verify(SECRET, {k: v for k, v in good.items() if k != "webhook-id"}, body)
    assert not verify(SECRET, {**good, "webhook-timestamp": "soon"}, body)
    assert not verify(SECRET, {**good, "webhook-signature": "v1,\u00e9t\u00e9"}, body)
    # Several signatures (a rotated key): one that matches is enough.
    rotated = {**good, "webhook-signature": "v1,AAAA " + good["webhook-signature"]}
    assert verify(SECRET, rotated, body)


# Options.


@pytest.mark.parametrize(
    ("options", "where", "says"),
    [
        ({"urls": []}, "urls", "at least 1"),
        ({"urls": ["ftp://example.org/x"]}, "urls.0", "http"),
        ({"urls": ["not a url"]}, "urls.0", "URL"),
        ({"secret": "too short"}, "secret", "at least 16 characters"),
        ({"secret": "whsec_not*base64*at*all"}, "secret", "base64"),
        ({"secret": "whsec_c2hvcnQga2V5"}, "secret", "at least 16 bytes"),
        ({"events": ["deleted"]}, "events.0", "'completed' or 'failed'"),
        ({"events": []}, "events", "at least 1"),
        ({"attempts": 0}, "attempts", "greater than or equal to 1"),
        ({"attempts": "8"}, "attempts", "valid integer"),
        ({"timeout_seconds": 0}, "timeout_seconds", "greater than 0"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
    ],
)
def test_a_bad_option_stops_start_up_naming_it_and_never_the_secret(
    options: dict[str, Any], where: str, says: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_hook(**{"urls": ["http://127.0.0.1:9/"], **options})
    assert str(e.value).startswith(f"plugins.webhook.{where}: "), e.value
    assert says in str(e.value)
    assert options.get("secret", SECRET) not in str(e.value)


def test_the_secret_is_required_and_never_shown_by_the_options() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.webhook\.secret: Field required"):
        load_pipeline(
            parse_settings(
                {
                    "processing": {"pipeline": ["webhook"]},
                    "plugins": {"webhook": {"urls": ["http://a"]}},
                }
            )
        )
    options = load_hook(["http://127.0.0.1:9/"]).options
    for shown in (repr(options), str(options), options.model_dump_json()):
        assert SECRET not in shown and "**" in shown


def test_the_plugin_adds_no_processing_step() -> None:
    pipeline = load_pipeline(hook_settings(["http://127.0.0.1:9/"]))
    assert not pipeline  # uploads skip `processing`: the blocking answer never waits for it
    assert [name for name, _ in pipeline.listening] == ["webhook"]


# Pauses and retry decisions.


def test_pauses_double_with_jitter_up_to_the_cap() -> None:
    pause = webhook_module().pause_before
    cap = webhook_module().MAX_PAUSE
    for attempt, low, high in [(1, 0.5, 1.0), (2, 1.0, 2.0), (4, 4.0, 8.0)]:
        assert all(low <= pause(attempt, 1.0, None) <= high for _ in range(50))
    assert len({pause(3, 1.0, None) for _ in range(20)}) > 1  # jittered
    assert all(cap / 2 <= pause(99, 1.0, None) <= cap for _ in range(50))


def test_retry_after_is_a_floor_and_capped_too() -> None:
    module = webhook_module()
    assert module.pause_before(1, 0.01, 5.0) == 5.0
    assert module.pause_before(1, 0.01, 3600.0) == module.MAX_PAUSE
    assert 0.5 <= module.pause_before(1, 1.0, 0.1) <= 1.0  # a shorter ask does not hurry us


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    parse = webhook_module().parse_retry_after
    assert parse("7") == 7.0
    assert parse(" 0 ") == 0.0
    assert parse(None) is None
    assert parse("soon") is None
    in_ten = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.0 < parse(in_ten) <= 10.0
    assert parse(format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *[(status, True) for status in (500, 502, 503, 408, 429)],
        *[(status, False) for status in (400, 401, 404, 410, 301)],
    ],
)
def test_which_answers_are_worth_another_attempt(status: int, retried: bool) -> None:
    assert webhook_module().retryable(status) is retried


# Through the service: what is announced, and when.


def test_a_blocking_upload_is_announced_once_signed_with_its_record(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    logs: pytest.LogCaptureFixture,
) -> None:
    receiver = receivers()
    live = live_factory(service_settings(backend, tmp_path, [receiver.url]))
    answer = live.http.post("/upload-blocking/", files={"file": ("a.txt", b"hello")})
    assert answer.status_code == 201, answer.text
    upload_id = answer.json()["id"]

    [delivery] = receiver.wait_for(1)
    delivered = wait_for_log(logs, f"webhook {upload_id}.completed to urls[0]")
    assert delivered.endswith("delivered (attempt 1)")
    assert delivery.verified
    assert delivery.headers["webhook-id"] == f"{upload_id}.completed"
    assert delivery.headers["content-type"] == "application/json"
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60
    record = live.http.get(f"/uploads/{upload_id}").json()
    assert delivery.json == {
        "type": "upload.completed",
        "timestamp": record["completed_at"],
        "data": record,
    }
    assert record["status"] == "completed" and record["results"] == {}
    assert len(receiver.deliveries) == 1  # "delivered" was the last word on it
    assert (
        delivered == f"webhook {upload_id}.completed to {receiver.named()}: delivered (attempt 1)"
    )


def test_a_background_upload_is_announced_when_it_completes(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    live = live_factory(service_settings(backend, tmp_path, [receiver.url]))
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("a.txt", b"x")}).json()["id"]
    [delivery] = receiver.wait_for(1)
    record = wait_for_status(live, upload_id)
    assert delivery.verified
    assert delivery.json["type"] == "upload.completed"
    assert delivery.json["data"] == record


def test_a_failed_upload_is_announced_as_failed(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    settings = service_settings(backend, tmp_path, [receiver.url])
    hook = load_pipeline(settings).plugins[0]
    live = live_factory(
        settings, pipeline=Pipeline([("picky", Picky(Options())), ("webhook", hook)], timeout=30)
    )
    answer = live.http.post("/upload-blocking/", files={"file": ("bad.txt", b"x")})
    upload_id = answer.json()["id"]
    assert answer.json()["status"] == "failed"

    [delivery] = receiver.wait_for(1)
    assert delivery.verified
    assert delivery.headers["webhook-id"] == f"{upload_id}.failed"
    assert delivery.json["type"] == "upload.failed"
    assert delivery.json["data"] == live.http.get(f"/uploads/{upload_id}").json()
    assert "cannot parse this file" in delivery.json["data"]["error"]


def test_only_the_configured_events_are_sent(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    logs: pytest.LogCaptureFixture,
) -> None:
    """`events = ["failed"]`: a completed upload, then a failed one; only the second is
    announced. The first one's hook ran before the second upload was even sent, so
    its delivery, had there been one, would not come after the second's."""
    receiver = receivers()
    settings = service_settings(backend, tmp_path, [receiver.url], events=["failed"])
    hook = load_pipeline(settings).plugins[0]
    live = live_factory(
        settings, pipeline=Pipeline([("picky", Picky(Options())), ("webhook", hook)], timeout=30)
    )
    good = live.http.post("/upload-blocking/", files={"file": ("good.txt", b"x")}).json()
    bad = live.http.post("/upload-blocking/", files={"file": ("bad.txt", b"x")}).json()
    assert (good["status"], bad["status"]) == ("completed", "failed")

    wait_for_log(logs, f"webhook {bad['id']}.failed to urls[0] (")
    assert [d.headers["webhook-id"] for d in receiver.wait_for(1)] == [f"{bad['id']}.failed"]
    assert not any(good["id"] in line for line in plugin_lines(logs))


def test_server_errors_are_retried_with_the_same_id_and_body_each_signed_afresh(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    logs: pytest.LogCaptureFixture,
) -> None:
    receiver = receivers()
    receiver.answers = [Answer(500), Answer(500)]
    live = live_factory(service_settings(backend, tmp_path, [receiver.url]))
    upload_id = live.http.post("/upload-blocking/", files={"file": ("a.txt", b"x")}).json()["id"]

    deliveries = receiver.wait_for(3)
    wait_for_log(logs, "delivered (attempt 3)")
    assert len(receiver.deliveries) == 3
    retries = [line for line in plugin_lines(logs) if "failed (HTTP 500); retrying in" in line]
    assert [line.split(": attempt ")[1][:1] for line in retries] == ["1", "2"]
    assert all(line.startswith(f"webhook {upload_id}.completed to urls[0]") for line in retries)
    assert all(d.verified for d in deliveries)
    assert {d.headers["webhook-id"] for d in deliveries} == {f"{upload_id}.completed"}
    assert len({d.body for d in deliveries}) == 1
    assert [d.answer.status for d in deliveries] == [500, 500, 200]


def test_retry_after_is_waited_out_and_the_retry_is_signed_with_its_own_time(
    receivers: Callable[..., Receiver],
) -> None:
    """The second attempt comes at least Retry-After (1 s) later, so its timestamp,
    and with it the signature, differs from the first's: signatures are made per attempt."""
    receiver = receivers()
    receiver.answers = [Answer(503, headers={"Retry-After": "1"})]
    announce(load_hook([receiver.url]), final_record())
    first, second = receiver.wait_for(2)
    assert first.verified and second.verified
    assert second.arrived - first.arrived >= 1.0
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert second.headers["webhook-signature"] != first.headers["webhook-signature"]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]


@pytest.mark.parametrize("status", [400, 404, 410])
def test_a_client_error_is_not_retried(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    logs: pytest.LogCaptureFixture,
    status: int,
) -> None:
    receiver = receivers()
    receiver.answers = [Answer(status, body=b"no such hook")]
    live = live_factory(service_settings(backend, tmp_path, [receiver.url]))
    upload_id = live.http.post("/upload-blocking/", files={"file": ("a.txt", b"x")}).json()["id"]
    line = wait_for_log(logs, f"webhook {upload_id}.completed to urls[0]")
    assert line.endswith(f"refused with HTTP {status}: 'no such hook'; not retried")
    assert len(receiver.wait_for(1)) == 1


@pytest.mark.parametrize("status", [408, 429])
def test_timeout_and_too_many_requests_answers_are_retried(
    receivers: Callable[..., Receiver], logs: pytest.LogCaptureFixture, status: int
) -> None:
    receiver = receivers()
    receiver.answers = [Answer(status)]
    announce(load_hook([receiver.url]), final_record())
    assert [d.answer.status for d in receiver.deliveries] == [status, 200]
    wait_for_log(logs, "delivered (attempt 2)")


def test_a_receiver_with_another_secret_refuses_and_is_not_retried(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    logs: pytest.LogCaptureFixture,
) -> None:
    receiver = receivers(
        secret="whsec_" + base64.b64encode(b"not the same key, not at all").decode()
    )
    live = live_factory(service_settings(backend, tmp_path, [receiver.url]))
    upload_id = live.http.post("/upload-blocking/", files={"file": ("a.txt", b"x")}).json()["id"]
    line = wait_for_log(logs, f"webhook {upload_id}.completed to urls[0]")
    assert line.endswith("refused with HTTP 401: 'signature does not verify'; not retried")
    [delivery] = receiver.wait_for(1)
    assert not delivery.verified


def test_a_plain_secret_verifies_on_the_receiver(receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(secret=PLAIN_SECRET)
    announce(load_hook([receiver.url], secret=PLAIN_SECRET), final_record(Status.failed))
    [delivery] = receiver.wait_for(1)
    assert delivery.verified and delivery.json["type"] == "upload.failed"


# Retry limits, timeouts, connection errors, several URLs (calling `finished` directly).


def test_attempts_run_out_and_the_loss_is_logged(
    receivers: Callable[..., Receiver], logs: pytest.LogCaptureFixture
) -> None:
    receiver = receivers()
    receiver.answers = [Answer(500)] * 5
    record = final_record()
    announce(load_hook([receiver.url], attempts=3), record)
    assert len(receiver.deliveries) == 3
    assert plugin_lines(logs)[-1] == (
        f"webhook {record.id}.completed to {receiver.named()}: "
        "not delivered, giving up after 3 attempt(s): HTTP 500"
    )


def test_no_retry_is_started_that_would_pass_the_deadline(
    receivers: Callable[..., Receiver], logs: pytest.LogCaptureFixture
) -> None:
    receiver = receivers()
    receiver.answers = [Answer(500)] * 5
    announce(load_hook([receiver.url], backoff_seconds=1.0, deadline_seconds=0.4), final_record())
    assert len(receiver.deliveries) == 1  # the first pause (0.5 s at least) would pass 0.4 s
    assert plugin_lines(logs)[-1].endswith(
        "giving up after 1 attempt(s): HTTP 500; another attempt would pass the deadline (0.4 s)"
    )


def test_a_slow_answer_times_out_and_is_retried(
    receivers: Callable[..., Receiver], logs: pytest.LogCaptureFixture
) -> None:
    receiver = receivers()
    receiver.answers = [Answer(hold=30)]  # until the receiver closes
    announce(load_hook([receiver.url], timeout_seconds=0.3), final_record())
    assert len(receiver.deliveries) == 2
    lines = plugin_lines(logs)
    assert "attempt 1 failed (no answer within 0.3 s)" in lines[0]
    assert lines[-1].endswith("delivered (attempt 2)")


def test_connection_errors_are_retried(logs: pytest.LogCaptureFixture) -> None:
    announce(load_hook([f"http://127.0.0.1:{closed_port()}/"], attempts=2), final_record())
    lines = plugin_lines(logs)
    assert len(lines) == 2
    assert "attempt 1 failed (Cannot connect to host 127.0.0.1" in lines[0]
    assert "giving up after 2 attempt(s): Cannot connect to host 127.0.0.1" in lines[1]


def test_each_url_is_delivered_concurrently_and_on_its_own(
    receivers: Callable[..., Receiver], logs: pytest.LogCaptureFixture
) -> None:
    """Each receiver holds its answer until the other has been reached: only concurrent
    deliveries get both through (one after the other, the first would wait in vain).
    One refuses for good, which stops only its own deliveries."""
    accepting, refusing = receivers(), receivers()
    accepting.answers = [Answer(200, hold=10, until=refusing.arrived)]
    refusing.answers = [Answer(400, hold=10, until=accepting.arrived)]
    announce(load_hook([accepting.url, refusing.url], timeout_seconds=12), final_record())
    [accepted], [refused] = accepting.deliveries, refusing.deliveries
    assert accepted.saw_until and refused.saw_until
    assert accepted.body == refused.body
    lines = plugin_lines(logs)
    assert any(line.endswith("delivered (attempt 1)") and "urls[0]" in line for line in lines)
    assert any("urls[1]" in line and "refused with HTTP 400" in line for line in lines)


def test_after_close_nothing_is_sent_and_that_is_logged(
    receivers: Callable[..., Receiver], logs: pytest.LogCaptureFixture
) -> None:
    receiver = receivers()
    hook = load_hook([receiver.url])
    record = final_record()

    async def close_then_finish() -> None:
        await hook.close()
        await hook.finished(record)

    asyncio.run(close_then_finish())
    assert receiver.deliveries == []
    assert plugin_lines(logs) == [
        f"webhook {record.id}.completed: not sent, the plugin is closed (shutting down)"
    ]


# Shutdown.


def test_shutdown_waits_for_a_delivery_in_flight(
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    logs: pytest.LogCaptureFixture,
) -> None:
    receiver = receivers()
    receiver.answers = [Answer(hold=1.0)]  # a slow receiver, well within the grace
    app = create_app(service_settings(backend, tmp_path, [receiver.url]))
    with serving(app) as url, httpx.Client(base_url=url) as http:
        upload_id = http.post("/upload-blocking/", files={"file": ("a.txt", b"x")}).json()["id"]
        receiver.wait_for(1)  # in flight: the receiver holds its answer
    # The server has stopped: shutdown let the delivery end before closing the plugin.
    assert plugin_lines(logs) == [
        f"webhook {upload_id}.completed to {receiver.named()}: delivered (attempt 1)"
    ]


def test_shutdown_past_the_grace_abandons_the_delivery_and_says_so(
    backend: Backend,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline_module, "FINISHING_GRACE", 0.3)
    receiver = receivers()
    receiver.answers = [Answer(hold=30)]  # answers only once the receiver closes
    app = create_app(service_settings(backend, tmp_path, [receiver.url]))
    with serving(app) as url, httpx.Client(base_url=url) as http:
        upload_id = http.post("/upload-blocking/", files={"file": ("a.txt", b"x")}).json()["id"]
        receiver.wait_for(1)
    assert plugin_lines(logs) == [
        f"webhook {upload_id}.completed to {receiver.named()}: "
        "abandoned during attempt 1, not delivered"
    ]

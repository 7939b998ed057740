"""The log of a real service process: one line per request and per upload state change,
every line JSON when configured so, and no secret, token or file contents in any.

The JSON test runs `uploadsvc serve` on S3 (moto's server) with recognisable
credentials in `[storage.options]` (staging in the same bucket uses them too),
sends a recognisable bearer token on every request and a recognisable marker
in every file, then reads the whole output after SIGTERM. The text test checks
the default format; another runs `uvicorn uploadsvc.app:app` directly, whose
own access log must give way to ours rather than double it; the last runs
`uploadsvc worker` on a Redis queue, whose job lines are JSON too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import Backend
from tests.backends.s3 import S3Backend
from tests.backends.tools import free_port
from tests.e2e.conftest import Instance, plugin_env, write_toml
from tests.rawhttp import MULTIPART_TYPE, multipart, post

KEY = "AKIALOGTESTKEY7QX2"
SECRET = "log-test-secret-5b9f/Zq+w"
TOKEN = "log-test-token-e41c7a"
MARKER = b"FILE-CONTENTS-MARKER-93d0"
LIMIT = 64 << 10
UNKNOWN = "0" * 28  # a well-formed id nobody has


@dataclass
class Sent:
    """One request as the client saw it."""

    method: str
    path: str
    status: int
    request_id: str
    body_bytes: int = 0


class Client:
    """Sends every request with the token and notes what came back."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.sent: list[Sent] = []

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = self.http.request(method, path, **kwargs)
        length = int(answer.request.headers.get("content-length", 0))
        request_id = answer.headers["x-request-id"]
        self.sent.append(Sent(method, path, answer.status_code, request_id, length))
        return answer


def text(i: int) -> bytes:
    return b"plain text, allowed by the mimetype plugin\n" + MARKER + f" {i}\n".encode()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_json_log_of_a_real_service_has_every_request_and_change_and_no_secret(
    backend: Backend, tmp_path: Path, plugin_site: Path, instances: list[Instance]
) -> None:
    assert isinstance(backend, S3Backend)
    options = {**backend.options, "key": KEY, "secret": SECRET}
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": backend.url, "options": options},
            "staging": {"url": backend.url.rsplit("/", 1)[0] + "/staging"},
            "limits": {"max_upload_bytes": LIMIT},
            "processing": {"pipeline": ["mimetype"]},
            "plugins": {"mimetype": {"allow": ["text/*"]}},
            "logging": {"format": "json"},
        },
    )
    service = Instance(config, plugin_env(plugin_site), tmp_path / "service.log")
    instances.append(service)
    service.wait_healthy()
    call = Client(service.url)

    mine = "e2e-logs.blocking_1"
    blocking = call(
        "POST", "/upload-blocking/", files={"file": ("a", text(1))}, headers={"X-Request-ID": mine}
    )
    assert blocking.status_code == 201 and blocking.headers["x-request-id"] == mine
    background = call("POST", "/upload-nonblocking/", files={"file": ("b.txt", text(2))})
    assert background.status_code == 202
    blocked_id, background_id = blocking.json()["id"], background.json()["id"]
    while call("GET", f"/uploads/{background_id}").json()["status"] != "completed":
        time.sleep(0.05)
    binary = b"\x00\x01\x02" + MARKER
    rejected = call("POST", "/upload-blocking/", files={"file": ("c.bin", binary)})
    assert rejected.status_code == 422
    rejected_id = rejected.json()["id"]
    too_large = call("POST", "/upload-blocking/", files={"file": ("d", MARKER * (LIMIT // 8))})
    assert too_large.status_code == 413
    download = call("GET", f"/uploads/{blocked_id}/content")
    assert download.content == text(1)
    assert call("DELETE", f"/uploads/{background_id}").status_code == 204
    assert call("GET", f"/uploads/{UNKNOWN}").status_code == 404
    # A client that vanishes mid-upload: no answer reaches it, the log still has its line.
    body = multipart(MARKER * 1000)
    vanished = post(
        f"{service.url}/upload-blocking/",
        [body[: len(body) // 2]],
        {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(body))},
        close_early=True,
    )
    assert vanished.status is None
    time.sleep(0.5)  # the service notices and answers into the void
    call.http.close()
    assert service.kill(signal.SIGTERM) in (0, -signal.SIGTERM)

    output = service.log.read_text()
    lines = [_json(line) for line in output.splitlines()]
    for secret in (KEY, SECRET, TOKEN, MARKER.decode(), "Bearer"):
        assert secret not in output, f"{secret!r} in the log"
    assert "[redacted]" not in output  # no line even tried to show a secret
    assert not [x for x in lines if x.get("logger") == "uvicorn.access"]
    assert any(x["event"].startswith("Finished server process") for x in lines)

    requests = [x for x in lines if x["event"] == "request" and x["path"] != "/healthz"]
    by_id = {x["request_id"]: x for x in requests}
    assert len(by_id) == len(requests) == len(call.sent) + 1  # + the vanished client
    for sent in call.sent:
        line = by_id.pop(sent.request_id)
        assert (line["method"], line["path"], line["status"]) == (
            sent.method,
            sent.path,
            sent.status,
        )
        assert line["level"] == "info" and line["duration_ms"] >= 0
        assert line["client"].startswith("127.0.0.1:")
    (gone,) = by_id.values()
    assert (gone["path"], gone["status"], gone["disconnected"]) == ("/upload-blocking/", 400, True)
    assert gone["received_bytes"] == len(body) // 2

    first = next(x for x in requests if x["request_id"] == mine)
    assert first["upload_id"] == blocked_id
    assert first["received_bytes"] == call.sent[0].body_bytes
    assert first["sent_bytes"] == len(blocking.content)
    downloaded = next(x for x in requests if x["path"].endswith("/content"))
    assert (downloaded["upload_id"], downloaded["sent_bytes"]) == (blocked_id, len(text(1)))
    assert next(x for x in requests if x["status"] == 413).get("upload_id") is None
    assert next(x for x in requests if x["status"] == 422)["upload_id"] == rejected_id

    changes: dict[str, list[dict[str, Any]]] = {}
    for x in lines:
        if x["event"] == "upload":
            changes.setdefault(x["upload_id"], []).append(x)
    assert set(changes) == {blocked_id, background_id, rejected_id}  # none for the 413
    statuses = {i: [x["status"] for x in c] for i, c in changes.items()}
    assert statuses == {
        blocked_id: ["processing", "completed"],
        background_id: ["queued", "storing", "processing", "completed", "deleted"],
        rejected_id: ["processing", "failed"],
    }
    assert {x["request_id"] for x in changes[blocked_id]} == {mine}  # answered after both
    queued, *job, deleted = changes[background_id]
    assert queued["request_id"] == background.headers["x-request-id"]
    assert not [x for x in job if "request_id" in x]  # the job belongs to no request
    assert deleted["request_id"] == call.sent[-2].request_id  # the DELETE
    assert all(x["size"] == len(text(2)) for x in job)
    failed = changes[rejected_id][-1]
    assert failed["rejected"] is True and "text/*" in failed["error"]


def _json(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except json.JSONDecodeError:
        pytest.fail(f"not a JSON line: {line!r}")
    assert isinstance(parsed, dict), line
    return parsed


_TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[(\w+)\s*\] (\S+)")


def test_text_log_is_one_readable_line_per_event(
    tmp_path: Path, plugin_site: Path, instances: list[Instance]
) -> None:
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": f"file://{tmp_path / 'store'}"},
            "staging": {"url": f"file://{tmp_path / 'staging'}"},
        },
    )
    service = Instance(config, plugin_env(plugin_site), tmp_path / "service.log")
    instances.append(service)
    service.wait_healthy()
    call = Client(service.url)
    upload = call(
        "POST", "/upload-blocking/", files={"file": ("a", text(1))}, headers={"X-Request-ID": "t-1"}
    )
    assert upload.status_code == 201
    assert call("GET", f"/uploads/{UNKNOWN}").status_code == 404
    call.http.close()
    assert service.kill(signal.SIGTERM) in (0, -signal.SIGTERM)

    output = service.log.read_text()
    lines = output.splitlines()
    for line in lines:
        assert _TEXT_LINE.match(line), f"not one event per line: {line!r}"
    requests = [x for x in lines if " request " in x and "path=/healthz" not in x]
    assert len(requests) == 2
    assert "method=POST path=/upload-blocking/ status=201 " in requests[0]
    assert "request_id=t-1 " in requests[0]
    assert f"upload_id={upload.json()['id']}" in requests[0]
    assert f"method=GET path=/uploads/{UNKNOWN} status=404 " in requests[1]
    assert f"request_id={call.sent[1].request_id}" in requests[1]
    (change,) = [x for x in lines if " upload " in x]
    assert "status=completed" in change and "request_id=t-1" in change
    assert TOKEN not in output and MARKER.decode() not in output


def test_uvicorn_serving_the_app_logs_each_request_once_in_the_format(
    tmp_path: Path,
) -> None:
    """`uvicorn uploadsvc.app:app`: uvicorn set up its logging first; ours replaces it."""
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": f"file://{tmp_path / 'store'}"},
            "staging": {"url": f"file://{tmp_path / 'staging'}"},
            "logging": {"format": "json"},
        },
    )
    port = free_port()
    env = {**os.environ, "UPLOADSVC_CONFIG": str(config)}
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "uploadsvc.app:app", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                answer = httpx.get(f"{url}/uploads/{UNKNOWN}", headers={"X-Request-ID": "u-1"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        assert answer.status_code == 404 and answer.headers["x-request-id"] == "u-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [_json(line) for line in log.read_text().splitlines()]
    assert [x["status"] for x in lines if x.get("request_id") == "u-1"] == [404]
    assert not [x for x in lines if x.get("logger") == "uvicorn.access"]
    assert any(x["event"] == "Application startup complete." for x in lines)


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_a_worker_logs_in_the_same_format(
    backend: Backend, tmp_path: Path, plugin_site: Path, redis_url: str, instances: list[Instance]
) -> None:
    """`uploadsvc worker` sets its logging up as `serve` does: the job's lines are JSON too."""
    assert isinstance(backend, S3Backend)
    options = {**backend.options, "key": KEY, "secret": SECRET}
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": backend.url, "options": options},
            "staging": {"url": backend.url.rsplit("/", 1)[0] + "/staging"},
            "queue": {"url": redis_url},
            "logging": {"format": "json"},
        },
    )
    env = plugin_env(plugin_site)
    service = Instance(config, env, tmp_path / "service.log")
    worker = Instance(config, env, tmp_path / "worker.log", worker=True)
    instances += [service, worker]
    service.wait_healthy()
    worker.wait_logged("taking jobs")
    call = Client(service.url)
    upload_id = call("POST", "/upload-nonblocking/", files={"file": ("w", text(3))}).json()["id"]
    while call("GET", f"/uploads/{upload_id}").json()["status"] != "completed":
        time.sleep(0.05)
    call.http.close()
    assert worker.kill(signal.SIGTERM) == 0
    assert service.kill(signal.SIGTERM) in (0, -signal.SIGTERM)

    output = worker.log.read_text()
    lines = [_json(line) for line in output.splitlines()]
    assert [_json(line) for line in service.log.read_text().splitlines()]
    job = [x["status"] for x in lines if x["event"] == "upload" and x["upload_id"] == upload_id]
    assert job == ["storing", "completed"]
    assert any("taking jobs" in x["event"] for x in lines)
    for secret in (KEY, SECRET, TOKEN, MARKER.decode()):
        assert secret not in output + service.log.read_text()

"""An accepted upload always finishes: SIGKILL a real service mid-work, start another.

The service runs as a real process with the test plugins (tests/e2e/conftest.py):
staging is `slow://` (a local folder whose reads are slow, so some uploads are
caught being stored), and `countruns` holds each upload in processing for a
while. The first instance accepts more background uploads than it runs at
once (so some are still queued), one blocking upload that reaches processing,
and one blocking upload whose body is still arriving; then it is killed with
SIGKILL. A second instance on the same configuration must finish every
accepted upload with the right bytes, process each to completion exactly once,
and leave nothing behind once the grace period has passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import stored_bytes
from tests.backends import Backend
from tests.e2e.conftest import Instance, plugin_env, write_toml
from tests.rawhttp import MULTIPART_TYPE, multipart
from uploadsvc.records import index_key

BACKGROUND = 10  # more than one instance runs at once (CONCURRENT_JOBS), so some wait queued
PROCESS_SECONDS = 3.0


def _config(backend: Backend, tmp_path: Path) -> Path:
    return write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": backend.url, "options": backend.options},
            "staging": {"url": f"slow://{tmp_path / 'staging'}", "options": {"delay": 0.3}},
            "jobs": {"lease_seconds": 2.0, "backoff_seconds": 0.1, "grace_seconds": 3.0},
            "processing": {"pipeline": ["countruns"]},
            "plugins": {
                "countruns": {"log": str(tmp_path / "runs.log"), "seconds": PROCESS_SECONDS}
            },
        },
    )


def _runs(tmp_path: Path) -> tuple[Counter[str], Counter[str]]:
    log = tmp_path / "runs.log"
    lines = log.read_text().split() if log.exists() else []
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    return Counter(i for w, i in pairs if w == "start"), Counter(i for w, i in pairs if w == "end")


def _stalled_blocking_upload(url: str) -> socket.socket:
    """A blocking upload whose headers and first MiB are sent, the rest never."""
    port = int(url.rsplit(":", 1)[1])
    body = multipart(os.urandom(8 << 20))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /upload-blocking/ HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: 1 << 20]
    )
    return sock


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
def test_sigkill_mid_work_then_restart_finishes_every_accepted_upload(
    backend: Backend, tmp_path: Path, plugin_site: Path, instances: list[Instance]
) -> None:
    config, env = _config(backend, tmp_path), plugin_env(plugin_site)
    first = Instance(config, env, tmp_path / "first.log")
    instances.append(first)
    first.wait_healthy()

    payloads = {}
    for i in range(BACKGROUND):
        data = os.urandom((1 + 3 * (i % 3)) << 20)  # stored in 0.3, 1.2 or 2.1 s
        answer = httpx.post(f"{first.url}/upload-nonblocking/", files={"file": (f"b{i}", data)})
        assert answer.status_code == 202
        payloads[answer.json()["id"]] = data
    blocking_data = os.urandom(2 << 20)
    blocking = threading.Thread(  # its client never gets an answer: the server dies
        target=_post_quietly, args=(first.url, blocking_data), daemon=True
    )
    blocking.start()
    stalled = _stalled_blocking_upload(first.url)

    deadline = time.monotonic() + 30
    while True:  # until the blocking upload is recorded and some job is processing
        seen = {r["id"]: r["status"] for r in httpx.get(f"{first.url}/uploads").json()["items"]}
        starts, _ = _runs(tmp_path)
        if len(seen) == BACKGROUND + 1 and starts:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    stalled.close()
    at_kill = Counter(seen.values())
    assert at_kill["queued"] and at_kill["storing"] and at_kill["processing"], at_kill
    assert not at_kill["completed"], at_kill
    (blocking_id,) = seen.keys() - payloads.keys()
    payloads[blocking_id] = blocking_data

    began = time.monotonic()
    second = Instance(config, env, tmp_path / "second.log")
    instances.append(second)
    second.wait_healthy()
    records = _wait_all_completed(second.url, payloads.keys(), timeout=60)
    recovery = time.monotonic() - began
    print(f"\n{backend.name}: statuses at SIGKILL {dict(at_kill)}; all done {recovery:.1f} s after")

    for upload_id, data in payloads.items():
        assert records[upload_id]["sha256"] == hashlib.sha256(data).hexdigest()
        assert stored_bytes(backend, upload_id) == data
    starts, ends = _runs(tmp_path)
    assert set(ends) == set(payloads) and set(ends.values()) == {1}, ends  # once to completion
    assert any(n == 2 for n in starts.values()), starts  # some were cut while processing

    expected = sorted(k for i in payloads for k in (i, f"{i}.json", index_key(i)))
    deadline = time.monotonic() + 30  # the sweep removes the stalled upload's part after grace
    while backend.leftovers() != expected or any((tmp_path / "staging").iterdir()):
        assert time.monotonic() < deadline, (
            backend.leftovers(),
            list((tmp_path / "staging").iterdir()),
        )
        time.sleep(0.2)


def _post_quietly(url: str, data: bytes) -> None:
    with contextlib.suppress(httpx.TransportError):
        httpx.post(f"{url}/upload-blocking/", files={"file": ("blocking", data)}, timeout=60)


def _wait_all_completed(url: str, ids: Any, timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = {i: httpx.get(f"{url}/uploads/{i}").json() for i in ids}
        if all(r.get("status") == "completed" for r in records.values()):
            return records
        assert time.monotonic() < deadline, {i: r.get("status") for i, r in records.items()}
        time.sleep(0.2)

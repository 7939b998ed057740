"""SIGTERM: stop accepting, finish what is in flight, hand background work over at once.

Real service processes on one local folder. An instance that gets SIGTERM
refuses new connections, still completes a blocking upload a slow client is
sending, and shuts down cleanly; a background upload it was processing (the
`countruns` test processor holds it) has its lease released, so another
instance takes it over at its next sweep, long before the lease would expire.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.e2e.conftest import Instance, plugin_env, write_toml
from tests.rawhttp import MULTIPART_TYPE, multipart_stream

LEASE = 8.0  # an expired lease would take this long; a released one far less


def _start(tmp_path: Path, site: Path, names: list[str], **processing: object) -> list[Instance]:
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": f"file://{tmp_path / 'store'}"},
            "staging": {"url": f"file://{tmp_path / 'staging'}"},
            "jobs": {"lease_seconds": LEASE},
            "processing": processing,
            "plugins": (
                {"countruns": {"log": str(tmp_path / "runs.log"), "seconds": 4.0}}
                if processing
                else {}
            ),
        },
    )
    started = [Instance(config, plugin_env(site), tmp_path / f"{name}.log") for name in names]
    for instance in started:
        instance.wait_healthy()
    return started


def _terminated_cleanly(instance: Instance) -> None:
    # uvicorn re-raises the signal once it has shut down, as process managers expect.
    assert instance.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Finished server process" in instance.log.read_text()


def test_sigterm_refuses_new_connections_and_finishes_an_upload_in_flight(
    tmp_path: Path, plugin_site: Path, instances: list[Instance]
) -> None:
    (only,) = _start(tmp_path, plugin_site, ["only"])
    instances.append(only)
    blocks = [os.urandom(1 << 20) for _ in range(4)]

    def slow_body() -> Iterator[bytes]:
        for block in multipart_stream(iter(blocks)):
            yield block
            time.sleep(0.3)

    outcome: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: outcome.append(
            httpx.post(
                f"{only.url}/upload-blocking/",
                content=slow_body(),
                headers={"Content-Type": MULTIPART_TYPE},
                timeout=30,
            )
        )
    )
    sender.start()
    time.sleep(0.4)  # the upload is in flight
    only.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        httpx.get(f"{only.url}/healthz", timeout=2)
        refused = False
    except httpx.TransportError:
        refused = True
    sender.join(30)
    _terminated_cleanly(only)
    assert refused, "a SIGTERMed instance must not take new connections"
    (answer,) = outcome
    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == hashlib.sha256(b"".join(blocks)).hexdigest()


def test_sigterm_hands_background_work_to_another_instance_at_once(
    tmp_path: Path, plugin_site: Path, instances: list[Instance]
) -> None:
    first, second = _start(tmp_path, plugin_site, ["first", "second"], pipeline=["countruns"])
    instances += [first, second]
    log = tmp_path / "runs.log"
    payload = os.urandom(1 << 20)
    answer = httpx.post(f"{first.url}/upload-nonblocking/", files={"file": ("bg", payload)})
    upload_id = answer.json()["id"]
    while not log.exists():  # processing on the first instance
        time.sleep(0.02)
    terminated = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    _terminated_cleanly(first)
    released = json.loads((tmp_path / "store" / f"{upload_id}.json").read_text())
    assert released["status"] == "processing" and released["job"]["owner"] is None

    while True:
        record = httpx.get(f"{second.url}/uploads/{upload_id}").json()
        if record["status"] == "completed":
            break
        assert time.monotonic() - terminated < LEASE + 4, "taken over only once the lease expired"
        time.sleep(0.05)
    taken_over = log.read_text().split()
    assert taken_over == ["start", upload_id, "start", upload_id, "end", upload_id]
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()

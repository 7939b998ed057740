"""Jobs on a real Redis queue, run by two `uploadsvc worker` processes.

The service (HTTP only: its jobs go to Redis) and two workers share an S3
bucket (moto's server) for storage and staging, and a real redis-server for
the queue. One worker is killed with SIGKILL while it processes; the other
finishes every upload, each processed to completion exactly once. Start-up
refuses a Redis queue with local staging, which workers elsewhere could not
read.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import Backend
from tests.backends.s3 import S3Backend
from tests.e2e.conftest import Instance, plugin_env, write_toml

LEASE = 3.0


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_two_workers_one_killed_mid_job_every_upload_finishes_once(
    backend: Backend,
    tmp_path: Path,
    plugin_site: Path,
    redis_url: str,
    instances: list[Instance],
) -> None:
    assert isinstance(backend, S3Backend)
    log = tmp_path / "runs.log"
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": backend.url, "options": backend.options},
            "staging": {"url": backend.url.rsplit("/", 1)[0] + "/staging"},
            "jobs": {"lease_seconds": LEASE, "grace_seconds": 2.0},
            "queue": {"url": redis_url},
            "processing": {"pipeline": ["countruns"]},
            "plugins": {"countruns": {"log": str(log), "seconds": 2.0}},
        },
    )
    env = plugin_env(plugin_site)
    service = Instance(config, env, tmp_path / "service.log")
    workers = [Instance(config, env, tmp_path / f"worker{n}.log", worker=True) for n in (1, 2)]
    instances += [service, *workers]
    service.wait_healthy()
    for worker in workers:
        worker.wait_logged("taking jobs")

    payloads = {}
    for i in range(6):
        data = os.urandom((1 + i % 2) << 20)
        answer = httpx.post(f"{service.url}/upload-nonblocking/", files={"file": (f"f{i}", data)})
        assert answer.status_code == 202
        payloads[answer.json()["id"]] = data
    while True:  # until some job is processing on a worker
        owners = {_owner_pid(backend, i) for i in payloads} - {None}
        if owners & {w.proc.pid for w in workers} and log.exists():
            break
        time.sleep(0.02)
    victim = next(w for w in workers if w.proc.pid in owners)
    assert victim.kill(signal.SIGKILL) == -signal.SIGKILL
    killed = time.monotonic()

    deadline = killed + LEASE + 30
    while True:
        statuses = {i: httpx.get(f"{service.url}/uploads/{i}").json() for i in payloads}
        if all(r["status"] == "completed" for r in statuses.values()):
            break
        assert time.monotonic() < deadline, {i: r["status"] for i, r in statuses.items()}
        time.sleep(0.1)
    print(f"\nredis: the killed worker's jobs done {time.monotonic() - killed:.1f} s later")
    for upload_id, data in payloads.items():
        assert statuses[upload_id]["sha256"] == hashlib.sha256(data).hexdigest()
        assert httpx.get(f"{service.url}/uploads/{upload_id}/content").content == data
    ends = Counter(line.split()[1] for line in log.read_text().splitlines() if "end" in line)
    assert ends == Counter(dict.fromkeys(payloads, 1)), ends
    assert "Traceback" not in workers[1 - workers.index(victim)].log.read_text()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_redis_queue_with_local_staging_is_refused_in_one_line(
    tmp_path: Path, command: str
) -> None:
    staging = {"path": str(tmp_path / "staging")}
    line = _refusal(tmp_path, command, {"url": f"file://{tmp_path / 'store'}"}, staging)
    assert line.startswith("uploadsvc: staging.url: ") and "workers" in line


def test_a_redis_queue_with_storage_of_one_process_is_refused_in_one_line(tmp_path: Path) -> None:
    line = _refusal(tmp_path, "worker", {"url": "memory://store"}, {"url": "memory://staging"})
    assert line.startswith("uploadsvc: storage.url: memory://store lives in one process")


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_an_unreachable_queue_stops_start_up_in_one_line(backend: Backend, tmp_path: Path) -> None:
    storage = {"url": backend.url, "options": backend.options}
    staging = {"url": backend.url.rsplit("/", 1)[0] + "/staging"}
    assert "queue redis://127.0.0.1:9/0" in _refusal(tmp_path, "worker", storage, staging)


def _refusal(tmp_path: Path, command: str, storage: dict[str, Any], staging: dict[str, Any]) -> str:
    """The one line a start-up with a Redis queue (on a closed port) is refused with."""
    config = write_toml(
        tmp_path / "service.toml",
        {"storage": storage, "staging": staging, "queue": {"url": "redis://127.0.0.1:9/0"}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "uploadsvc", command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    return line


def _owner_pid(backend: S3Backend, upload_id: str) -> int | None:
    body = backend.s3.get_object(Bucket=backend.bucket, Key=f"uploads/{upload_id}.json")
    job = json.loads(body["Body"].read())["job"]
    return int(job["owner"].split("/")[1]) if job and job["owner"] else None
